"""The two baselines every model is measured against.

- CRM stage probability: the probability the CRM attaches to the deal's stage. For "won by the end of
  the quarter" it is the weighted-pipeline rule: the stage probability if the close date falls in the
  quarter, else nothing.
- Stage win rate: the historical share of deals that reached a stage and were won (the "reached this
  stage" frequencies open-source CRMs use); for the quarter target, the share of a stage's past
  examples that were won by their quarter's end. Both are smoothed toward the pipeline's rate, so a
  stage with few deals does not get a wild number.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cockpit.scoring.examples import ExampleSet, Prepared
from cockpit.scoring.features import FeatureFrame, StageTable

CRM = "crm_stage_probability"
STAGE_RATE = "stage_win_rate"
BASELINES = (CRM, STAGE_RATE)
CRM_CLIP = 0.01
"""CRM stage probabilities are clipped to [1%, 99%]: a CRM's 0 % or 100 % would make log loss infinite."""


@dataclass(frozen=True)
class StageRates:
    """A target's historical rate per stage code, smoothed toward its pipeline's rate."""

    rate: np.ndarray
    deals: np.ndarray
    """Training deals behind each stage's rate (deals that reached it, or had examples in it)."""
    overall: float

    def predict(self, stage: np.ndarray) -> np.ndarray:
        known = stage >= 0
        return np.where(known, self.rate[np.where(known, stage, 0)], self.overall)


def crm_probability(frame: FeatureFrame, stages: StageTable, target: str) -> np.ndarray:
    """The CRM's stage probability (won), or the weighted-pipeline rule (in quarter)."""
    known = frame.stage >= 0
    p = np.where(known, stages.probability[np.where(known, frame.stage, 0)], 0.0)
    if target == "in_quarter":
        in_quarter = ~np.isnan(frame.close_day) & (frame.close_day < frame.quarter_end)
        p = np.where(in_quarter, p, 0.0)
    return np.clip(p, CRM_CLIP, 1 - CRM_CLIP)


def _smooth(wins: np.ndarray, n: np.ndarray, prior: np.ndarray, k: float) -> np.ndarray:
    return (wins + k * prior) / np.maximum(n + k, 1e-12)


def _pipeline_prior(
    stages: StageTable, wins: np.ndarray, n: np.ndarray, overall: float, k: float
) -> np.ndarray:
    """Per stage code: its pipeline's smoothed rate (pooled over the pipeline's stages)."""
    pipes = stages.pipeline_code
    p_wins = np.bincount(pipes, weights=wins, minlength=pipes.max() + 1 if len(pipes) else 0)
    p_n = np.bincount(pipes, weights=n, minlength=pipes.max() + 1 if len(pipes) else 0)
    return _smooth(p_wins, p_n, np.full(len(p_n), overall), k)[pipes] if len(pipes) else np.zeros(0)


def reached_rates(prep: Prepared, train_deals: np.ndarray, k: float) -> StageRates:
    """Won target: share of training deals that reached each open stage and were won."""
    flat, out, stages = prep.flat, prep.outcomes, prep.stages
    n_stages = len(stages.ids)
    row_deal = flat.row_key >> 20
    close = out.close_day[row_deal]
    keep = train_deals[row_deal] & (flat.row_day < close) & (flat.row_stage >= 0)
    pairs = np.unique((row_deal[keep] << 16) + flat.row_stage[keep])
    deal, stage = pairs >> 16, pairs & 0xFFFF
    stage_open = ~stages.is_closed[stage]
    deal, stage = deal[stage_open], stage[stage_open]
    n = np.bincount(stage, minlength=n_stages).astype(np.float64)
    wins = np.bincount(stage, weights=out.won[deal].astype(np.float64), minlength=n_stages)
    deals_won = out.won[train_deals]
    overall = float((deals_won.sum() + 1.0) / (len(deals_won) + 2.0))
    prior = _pipeline_prior(stages, wins, n, overall, k)
    return StageRates(rate=_smooth(wins, n, prior, k), deals=n.astype(np.int64), overall=overall)


def example_rates(
    examples: ExampleSet, target: str, rows: np.ndarray, stages: StageTable, k: float
) -> StageRates:
    """Any target: share of the training examples in each stage with a positive label (per-deal smoothing)."""
    frame = examples.frame
    n_stages = len(stages.ids)
    y = examples.labels[target][rows]
    stage = frame.stage[rows]
    deal = frame.deal[rows]
    known = stage >= 0
    y, stage, deal = y[known], stage[known], deal[known]
    n_ex = np.bincount(stage, minlength=n_stages).astype(np.float64)
    pos = np.bincount(stage, weights=y, minlength=n_stages)
    pairs = np.unique((deal << 16) + stage)
    n_deals = np.bincount(pairs & 0xFFFF, minlength=n_stages).astype(np.float64)
    overall = float((y.sum() + 1.0) / (len(y) + 2.0))
    share = np.where(n_ex > 0, pos / np.maximum(n_ex, 1.0), 0.0)
    wins = share * n_deals
    prior = _pipeline_prior(stages, wins, n_deals, overall, k)
    return StageRates(rate=_smooth(wins, n_deals, prior, k), deals=n_deals.astype(np.int64), overall=overall)
