"""The model's range: expected bookings and P10/P50/P90 for a quarter.

Bookings = closed won so far (known) + the open deals that will be won by quarter end + the
bookings from deals that do not exist yet (the run-rate, `cockpit.forecast.runrate`).

The open deals' sum is a Poisson-binomial over amounts. It is computed exactly on a fine grid
(`GRID` points over the whole support) for the deals that carry most of the variance, and by the
normal approximation for the rest (many small independent deals: the central limit theorem is
accurate there, and it keeps 100,000 deals well under a second). The run-rate is a log-normal with
the mean and variance learned from history (non-negative and skewed, as such bookings are). The
three parts are independent and combined by FFT convolution on the grid. No randomness: the same
input gives the same range.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

import numpy as np

from cockpit.forecast.config import CENT
from cockpit.forecast.runrate import RunRate

GRID = 8192
"""Points of the grid the distribution lives on; quantiles are exact to 1/GRID of its span."""
EXACT_DEALS = 400
"""Deals with the largest variance that are convolved exactly; the rest use the normal approximation."""
QUANTILES = (0.10, 0.50, 0.90)


@dataclass(frozen=True, slots=True)
class ForecastRange:
    """The model's view of the quarter's bookings (reporting currency)."""

    closed: Decimal
    """Closed won so far in the quarter."""
    open_expected: Decimal
    """Expected bookings from deals open on the as-of date (Σ p × value)."""
    run_rate_expected: Decimal
    """Expected bookings from deals created after the as-of date."""
    expected: Decimal
    """closed + open_expected + run_rate_expected."""
    p10: Decimal
    p50: Decimal
    p90: Decimal
    deals: int
    """Open deals with a probability that entered the range."""

    @property
    def low(self) -> Decimal:
        return self.p10

    @property
    def high(self) -> Decimal:
        return self.p90

    def contains(self, actual: Decimal) -> bool:
        """The actual bookings fell inside P10–P90."""
        return self.p10 <= actual <= self.p90


def forecast_range(
    closed: Decimal,
    values: Sequence[Decimal] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray,
    run_rate: RunRate | None = None,
) -> ForecastRange:
    """Expected bookings and P10/P50/P90 from per-deal values and in-quarter probabilities.

    `values` are the open deals' amounts in the reporting currency, `probabilities` their chances
    of being won by quarter end (0..1), in the same order.
    """
    v = np.asarray([float(x) for x in values] if not isinstance(values, np.ndarray) else values, dtype=float)
    p = np.asarray(probabilities, dtype=float)
    if v.shape != p.shape:
        raise ValueError(f"{len(v)} values but {len(p)} probabilities; give one probability per deal")
    if v.size and (np.any(p < 0) or np.any(p > 1) or np.any(np.isnan(p))):
        bad = float(p[(p < 0) | (p > 1) | np.isnan(p)][0])
        raise ValueError(f"probability {bad!r} is outside 0..1")
    if v.size and np.any(v < 0):
        raise ValueError(f"deal value {float(v[v < 0][0])!r} is negative")
    rr_mean = float(run_rate.expected) if run_rate else 0.0
    rr_var = run_rate.variance if run_rate else 0.0
    open_expected = float((v * p).sum())  # not np.dot: BLAS threads would spin a core for 0.1 s
    quantiles = _quantiles(v, p, rr_mean, rr_var)
    base = closed
    exp_open = _money(open_expected)
    exp_rr = _money(rr_mean)
    return ForecastRange(
        closed=closed,
        open_expected=exp_open,
        run_rate_expected=exp_rr,
        expected=base + exp_open + exp_rr,
        p10=base + _money(quantiles[0]),
        p50=base + _money(quantiles[1]),
        p90=base + _money(quantiles[2]),
        deals=int(v.size),
    )


def _money(x: float) -> Decimal:
    return Decimal(repr(max(0.0, float(x)))).quantize(CENT)


def _quantiles(v: np.ndarray, p: np.ndarray, rr_mean: float, rr_var: float) -> list[float]:
    """Quantiles of Σ Bernoulli(p_i)·v_i + LogNormal(rr_mean, rr_var)."""
    sure = float(v[p >= 1].sum())
    live = (p > 0) & (p < 1) & (v > 0)
    v, p = v[live], p[live]
    var = v * v * p * (1 - p)
    if v.size > EXACT_DEALS:
        top = np.argpartition(var, -EXACT_DEALS)[-EXACT_DEALS:]
        rest = np.ones(v.size, dtype=bool)
        rest[top] = False
        normal_mean, normal_var = float((v[rest] * p[rest]).sum()), float(var[rest].sum())
        v, p = v[top], p[top]
    else:
        normal_mean, normal_var = 0.0, 0.0
    span = float(v.sum()) + normal_mean + 8.0 * np.sqrt(normal_var) + _lognormal_upper(rr_mean, rr_var)
    if span <= 0:
        return [sure] * len(QUANTILES)
    step = span / (GRID - 1)
    pmf = _bernoulli_sum(v, p, step)
    if normal_var > 0 or normal_mean > 0:
        pmf = _convolve(pmf, _normal_pmf(normal_mean, normal_var, step))
    if rr_mean > 0:
        pmf = _convolve(pmf, _lognormal_pmf(rr_mean, rr_var, step))
    cdf = np.cumsum(pmf)
    cdf /= cdf[-1]
    out = []
    for q in QUANTILES:
        index = int(np.searchsorted(cdf, q))
        out.append(sure + index * step)
    return out


def _bernoulli_sum(v: np.ndarray, p: np.ndarray, step: float) -> np.ndarray:
    """Exact distribution of Σ Bernoulli(p_i)·v_i with each v_i rounded to the grid."""
    shifts = np.rint(v / step).astype(np.int64)
    pmf = np.zeros(int(shifts.sum()) + 1)
    pmf[0] = 1.0
    top = 0
    for k, pk in zip(shifts, p):
        if k == 0:
            continue
        moved = pmf[: top + 1] * pk
        pmf[: top + 1] *= 1.0 - pk
        pmf[k : k + top + 1] += moved
        top += int(k)
    return pmf


def _convolve(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    size = a.size + b.size - 1
    n = 1 << (size - 1).bit_length()
    out = np.fft.irfft(np.fft.rfft(a, n) * np.fft.rfft(b, n), n)[:size]
    np.clip(out, 0.0, None, out=out)
    return out


def _edges(step: float, count: int) -> np.ndarray:
    """Bin edges around grid points 0, step, 2·step, ... (bin i covers (i-½, i+½]·step)."""
    edges = (np.arange(count + 1) - 0.5) * step
    edges[0] = -np.inf
    edges[-1] = np.inf
    return edges


def _normal_pmf(mean: float, var: float, step: float) -> np.ndarray:
    if var <= 0:
        pmf = np.zeros(int(round(mean / step)) + 1)
        pmf[-1] = 1.0
        return pmf
    sd = float(np.sqrt(var))
    count = int(np.ceil((mean + 8 * sd) / step)) + 1
    cdf = _phi((_edges(step, count) - mean) / sd)
    return np.diff(cdf)


def _lognormal_params(mean: float, var: float) -> tuple[float, float]:
    sigma2 = float(np.log1p(max(var, 0.0) / (mean * mean)))
    return float(np.log(mean)) - sigma2 / 2.0, float(np.sqrt(sigma2))


def _lognormal_upper(mean: float, var: float) -> float:
    """A point above which the run-rate has negligible mass (8 sigma on the log scale, capped)."""
    if mean <= 0:
        return 0.0
    mu, sigma = _lognormal_params(mean, var)
    return float(min(np.exp(mu + 6.0 * sigma), mean + 12.0 * np.sqrt(max(var, 0.0)) + mean))


def _lognormal_pmf(mean: float, var: float, step: float) -> np.ndarray:
    if var <= 0:
        pmf = np.zeros(int(round(mean / step)) + 1)
        pmf[-1] = 1.0
        return pmf
    mu, sigma = _lognormal_params(mean, var)
    count = int(np.ceil(_lognormal_upper(mean, var) / step)) + 1
    edges = _edges(step, count)
    with np.errstate(divide="ignore"):
        z = (np.log(np.clip(edges, 0.0, None)) - mu) / sigma
    return np.diff(_phi(z))


def _phi(z: np.ndarray) -> np.ndarray:
    """Standard normal CDF (Abramowitz-Stegun 7.1.26 erf; error < 1.5e-7), vectorised."""
    x = np.abs(z) / np.sqrt(2.0)
    x = np.where(np.isfinite(x), x, 1e6)
    t = 1.0 / (1.0 + 0.3275911 * x)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1.0 - poly * np.exp(-x * x)
    return np.where(z >= 0, 0.5 * (1.0 + erf), 0.5 * (1.0 - erf))
