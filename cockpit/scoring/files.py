"""Model files: plain arrays in an .npz archive plus JSON metadata. No pickle, anywhere.

A model file is read with `numpy.load(..., allow_pickle=False)`: it can only hold numbers and text,
so opening a file from a shared store cannot run code. Every array is checked (dtype, shape, tree
indices) before use, and the metadata must name this format version and, when asked, the data
fingerprint of the store; anything else raises `ModelFileError` with what to do (retrain).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np

from cockpit.models import DealHistory, FiscalCalendar
from cockpit.scoring.errors import ModelFileError

FORMAT = "cockpit-win-model"
FORMAT_VERSION = 4
"""Bump when the file layout or the built-in feature list changes; older files are refused with a
request to retrain (3: the owner's closed deals)."""
_META = "__meta__"


def data_fingerprint(histories: Iterable[DealHistory]) -> str:
    """A hash of the closed deals a model learns from (id, outcome, close time, history length).

    Open deals do not enter it: they change every sync without changing what the model learned.
    """
    return fingerprint_of(
        (h.deal.id, h.deal.is_won, h.deal.closed_at, len(h.changes)) for h in histories if h.deal.is_closed
    )


def fingerprint_of(closed: Iterable[tuple[str, bool, datetime | None, int]]) -> str:
    """The same hash from (id, won, closed_at, history rows) of each closed deal, e.g. read in SQL."""
    digest = hashlib.sha256()
    lines = [f"{i}\t{int(bool(won))}\t{at.isoformat() if at else ''}\t{n}" for i, won, at, n in closed]
    for line in sorted(lines):
        digest.update(line.encode())
        digest.update(b"\n")
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def save_model(model: Any, path: Path) -> None:
    """Write `model` (a ScoringModel) to `path` atomically (a crash leaves the old file or the new one)."""
    from cockpit.scoring.model import ScoringModel

    if not isinstance(model, ScoringModel):
        raise TypeError(f"save_model expects a ScoringModel, not {type(model).__name__}")
    arrays, meta = _to_arrays(model)
    arrays[_META] = np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".model-", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _concat(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate(([0], np.cumsum([len(p) for p in parts]))).astype(np.int64)
    values = np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)
    return values, offsets


def _to_arrays(model: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from cockpit.scoring.estimators import LinearModel, TreeModel

    ctx = model.context
    st = ctx.stages
    ev = ctx.win_events
    arrays: dict[str, np.ndarray] = {
        "stages.pipeline_code": st.pipeline_code,
        "stages.order": st.order,
        "stages.probability": st.probability,
        "stages.is_closed": st.is_closed,
        "stages.is_won": st.is_won,
        "stages.category_rank": st.category_rank,
        "context.medians": ctx.stage_median_days,
        # one entry per owner and day: 32 bits each is plenty, and lifts are sums of whole categories
        "calls.owner": ctx.call_events.owner.astype(np.int32),
        "calls.day": ctx.call_events.day.astype(np.int32),
        "calls.calls": ctx.call_events.calls.astype(np.int32),
        "calls.lift": np.rint(ctx.call_events.lift).astype(np.int32),
        "events.day": ev.day,
        "events.owner": ev.owner,
        "events.team": ev.team,
        "events.won": ev.won,
        "references": model.references,
    }
    targets_meta: dict[str, Any] = {}
    for name, tm in model.targets.items():
        pre = f"target.{name}."
        arrays[pre + "rates"] = tm.rates.rate
        arrays[pre + "rates_deals"] = tm.rates.deals
        arrays[pre + "model_deals"] = tm.model_deals
        arrays[pre + "cal_x"] = tm.calibrator.x
        arrays[pre + "cal_y"] = tm.calibrator.y
        est = tm.estimator
        info: dict[str, Any] = {
            "chosen": tm.chosen,
            "kind": getattr(est, "kind", None),
            "rates_overall": tm.rates.overall,
            "shrinkage": tm.shrinkage,
            "min_stage": tm.min_stage,
            "calibrator": {"kind": tm.calibrator.kind, "a": tm.calibrator.a, "b": tm.calibrator.b},
        }
        shift = tm.calibrator.shift
        if shift is not None:
            info["calibrator"]["shift"] = {
                "days_col": shift.days_col, "amount_col": shift.amount_col, "currency_col": shift.currency_col
            }
            arrays[pre + "shift_medians"] = shift.medians
            arrays[pre + "shift_weights"] = shift.weights
        if est is not None:
            values, offsets = _concat(est.thresholds)
            arrays[pre + "thresholds"] = values
            arrays[pre + "threshold_offsets"] = offsets
            arrays[pre + "is_cat"] = est.is_cat
        if isinstance(est, TreeModel):
            info["baseline"] = est.baseline
            for field, values in est.nodes.items():
                arrays[pre + "node." + field] = values
            arrays[pre + "tree_offsets"] = est.tree_offsets
            arrays[pre + "bitsets"] = est.bitsets
            arrays[pre + "bitset_offsets"] = est.bitset_offsets
        elif isinstance(est, LinearModel):
            info["intercept"] = est.intercept
            arrays[pre + "table"] = est.table
        targets_meta[name] = info
    meta = dict(model.metadata)
    meta.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "context": {
                "stage_ids": list(st.ids),
                "stage_names": list(st.names),
                "pipeline_ids": list(st.pipeline_ids),
                "calendar_start_month": ctx.calendar.start_month,
                "owner_team": dict(ctx.owner_team),
                "event_owner_ids": list(ev.owner_ids),
                "event_team_ids": list(ev.team_ids),
                "call_owner_ids": list(ctx.call_events.owner_ids),
                "calls_through_day": ctx.call_events.through_day,
                "attributes": dict(ctx.attributes),
                "disabled": sorted(ctx.disabled),
                "win_rate_prior": ctx.win_rate_prior,
                "activity_window_days": ctx.activity_window_days,
            },
            "encoder": {
                "specs": [[s.name, s.kind, s.group] for s in model.encoder.specs],
                "vocab": model.encoder.vocab,
            },
            "owner_names": model.owner_names,
            "reasons": {
                "target": model.reason_settings.target,
                "max_reasons": model.reason_settings.max_reasons,
                "min_reasons": model.reason_settings.min_reasons,
            },
            "targets": targets_meta,
        }
    )
    return arrays, meta


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def load_model(path: Path, expected_fingerprint: str | None = None) -> Any:
    """Read a model file written by `save_model`; returns a ScoringModel.

    Raises ModelFileError when the file is missing, unreadable, holds anything but plain arrays, was
    written by another format version, or (with `expected_fingerprint`) was trained on other data.
    """
    path = Path(path)
    if not path.exists():
        raise ModelFileError(
            "No model yet", f"{path} does not exist; run `cockpit train` to build the win model"
        )
    arrays, meta = _read(path)
    if meta.get("format") != FORMAT:
        raise ModelFileError("Not a model file", f"{path} is not a Deal Cockpit win-model file")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFileError(
            "Model file from another version",
            f"{path} uses model format {version!r}, this cockpit reads format {FORMAT_VERSION}; "
            "run `cockpit train` to rebuild it",
        )
    found = meta.get("fingerprint")
    if expected_fingerprint is not None and found != expected_fingerprint:
        raise ModelFileError(
            "Model trained on other data",
            f"{path} was trained on different deals (fingerprint {str(found)[:12]}, this store "
            f"{expected_fingerprint[:12]}); run `cockpit train` to retrain on the current data",
        )
    try:
        return _from_arrays(arrays, meta)
    except (KeyError, ValueError, TypeError, IndexError) as err:
        raise ModelFileError(
            "Damaged model file", f"{path} is inconsistent ({err}); run `cockpit train` to rebuild it"
        ) from None


def _read(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except ValueError as err:
        raise ModelFileError(
            "Unsafe model file",
            f"{path} holds something other than plain arrays ({err}); it was not loaded. Run `cockpit train`",
        ) from None
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise ModelFileError(
            "Unreadable model file", f"{path} cannot be read ({err}); run `cockpit train`"
        ) from None
    for name, value in arrays.items():
        if value.dtype.kind not in "biuf" or value.dtype.fields is not None:
            raise ModelFileError(
                "Unsafe model file", f"{path}: array {name!r} has type {value.dtype}; not loaded"
            )
    raw = arrays.pop(_META, None)
    if raw is None or raw.dtype != np.uint8:
        raise ModelFileError("Not a model file", f"{path} has no cockpit metadata")
    try:
        meta = json.loads(raw.tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelFileError("Damaged model file", f"{path}: metadata is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise ModelFileError("Damaged model file", f"{path}: metadata is not a JSON object")
    return arrays, meta


def _split(values: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    if len(offsets) < 1 or offsets[0] != 0 or offsets[-1] != len(values) or np.any(np.diff(offsets) < 0):
        raise ValueError("array offsets are inconsistent")
    return [values[a:b] for a, b in pairwise(offsets)]


def _from_arrays(a: dict[str, np.ndarray], meta: dict[str, Any]) -> Any:
    from cockpit.scoring.baselines import StageRates
    from cockpit.scoring.estimators import NODE_FIELDS, Calibrator, ContextShift, Encoder, LinearModel, TreeModel
    from cockpit.scoring.features import CallEvents, FeatureContext, StageTable, WinEvents
    from cockpit.scoring.model import ReasonSettings, ScoringModel, TargetModel

    c = meta["context"]
    n_stages = len(c["stage_ids"])
    stages = StageTable(
        ids=tuple(map(str, c["stage_ids"])),
        names=tuple(map(str, c["stage_names"])),
        pipeline_ids=tuple(map(str, c["pipeline_ids"])),
        pipeline_code=a["stages.pipeline_code"].astype(np.int64),
        order=a["stages.order"].astype(np.float64),
        probability=a["stages.probability"].astype(np.float64),
        is_closed=a["stages.is_closed"].astype(bool),
        is_won=a["stages.is_won"].astype(bool),
        category_rank=a["stages.category_rank"].astype(np.float64),
    )
    for name in ("pipeline_code", "order", "probability", "is_closed", "is_won", "category_rank"):
        if len(getattr(stages, name)) != n_stages or len(stages.names) != n_stages:
            raise ValueError(f"stage table {name!r} has the wrong length")
    if np.any((stages.pipeline_code < 0) | (stages.pipeline_code >= max(1, len(stages.pipeline_ids)))):
        raise ValueError("stage table points at an unknown pipeline")
    events = WinEvents(
        owner_ids=tuple(map(str, c["event_owner_ids"])),
        team_ids=tuple(map(str, c["event_team_ids"])),
        day=a["events.day"].astype(np.int64),
        owner=a["events.owner"].astype(np.int64),
        team=a["events.team"].astype(np.int64),
        won=a["events.won"].astype(np.int64),
    )
    if len({len(events.day), len(events.owner), len(events.team), len(events.won)}) != 1:
        raise ValueError("past outcomes have mismatched lengths")
    calls = CallEvents(
        owner_ids=tuple(map(str, c["call_owner_ids"])),
        owner=a["calls.owner"].astype(np.int64),
        day=a["calls.day"].astype(np.int64),
        calls=a["calls.calls"].astype(np.int64),
        lift=a["calls.lift"].astype(np.float64),
        through_day=int(c["calls_through_day"]),
    )
    calls.check()
    medians = a["context.medians"].astype(np.float64)
    if len(medians) != n_stages:
        raise ValueError("stage medians have the wrong length")
    attributes = {str(k): v for k, v in dict(c["attributes"]).items() if v in ("num", "cat")}
    context = FeatureContext(
        stages=stages,
        calendar=FiscalCalendar(start_month=int(c["calendar_start_month"])),
        owner_team={str(k): (None if v is None else str(v)) for k, v in dict(c["owner_team"]).items()},
        win_events=events,
        stage_median_days=medians,
        call_events=calls,
        attributes=attributes,
        disabled=frozenset(map(str, c["disabled"])),
        win_rate_prior=float(c["win_rate_prior"]),
        activity_window_days=int(c["activity_window_days"]),
    )
    by_name = {s.name: s for s in context.specs}
    names = [str(spec[0]) for spec in meta["encoder"]["specs"]]
    if sorted(names) != sorted(by_name) or len(set(names)) != len(names):
        raise ValueError("the feature list does not match the stored context")
    specs = tuple(by_name[n] for n in names)
    vocab = {str(k): [str(v) for v in vs] for k, vs in dict(meta["encoder"]["vocab"]).items()}
    if any(len(vs) > 250 for vs in vocab.values()) or {s.name for s in specs if s.kind == "cat"} != set(
        vocab
    ):
        raise ValueError("categorical vocabularies do not match the features")
    encoder = Encoder(specs, vocab)
    n_features = len(specs)
    references = a["references"].astype(np.float64)
    if references.shape != (n_stages + 1, n_features):
        raise ValueError("reference deals have the wrong shape")
    targets = {}
    for name in ("won", "in_quarter"):
        info = meta["targets"][name]
        pre = f"target.{name}."
        rates = StageRates(
            rate=a[pre + "rates"].astype(np.float64),
            deals=a[pre + "rates_deals"].astype(np.int64),
            overall=float(info["rates_overall"]),
        )
        model_deals = a[pre + "model_deals"].astype(np.int64)
        if len(rates.rate) != n_stages or len(model_deals) != n_stages:
            raise ValueError(f"stage rates of {name!r} have the wrong length")
        cal = info["calibrator"]
        calibrator = Calibrator(
            kind=cal["kind"],
            a=float(cal["a"]),
            b=float(cal["b"]),
            x=a[pre + "cal_x"].astype(np.float64),
            y=a[pre + "cal_y"].astype(np.float64),
        )
        if "shift" in cal:
            calibrator.shift = ContextShift(
                days_col=int(cal["shift"]["days_col"]),
                amount_col=int(cal["shift"]["amount_col"]),
                currency_col=int(cal["shift"]["currency_col"]),
                medians=a[pre + "shift_medians"].astype(np.float64),
                weights=a[pre + "shift_weights"].astype(np.float64),
            )
        calibrator.validate(n_features)
        estimator: TreeModel | LinearModel | None = None
        if info["kind"] is not None:
            thresholds = _split(a[pre + "thresholds"].astype(np.float64), a[pre + "threshold_offsets"])
            is_cat = a[pre + "is_cat"].astype(bool)
            if info["kind"] == "gradient_boosting":
                estimator = TreeModel(
                    thresholds=thresholds,
                    is_cat=is_cat,
                    baseline=float(info["baseline"]),
                    nodes={f: a[pre + "node." + f] for f in NODE_FIELDS},
                    tree_offsets=a[pre + "tree_offsets"].astype(np.int64),
                    bitsets=a[pre + "bitsets"].astype(np.uint32),
                    bitset_offsets=a[pre + "bitset_offsets"].astype(np.int64),
                )
            elif info["kind"] == "logistic":
                estimator = LinearModel(
                    thresholds, is_cat, float(info["intercept"]), a[pre + "table"].astype(np.float64)
                )
            else:
                raise ValueError(f"unknown estimator {info['kind']!r}")
            estimator.validate(n_features)
        chosen = str(info["chosen"])
        if chosen not in ("model", "crm_stage_probability", "stage_win_rate"):
            raise ValueError(f"unknown forecast {chosen!r}")
        targets[name] = TargetModel(
            target=name,
            chosen=chosen,
            estimator=estimator,
            calibrator=calibrator,
            rates=rates,
            model_deals=model_deals,
            shrinkage=float(info["shrinkage"]),
            min_stage=int(info["min_stage"]),
        )
    r = meta["reasons"]
    settings = ReasonSettings(str(r["target"]), int(r["max_reasons"]), int(r["min_reasons"]))
    if settings.target not in targets:
        raise ValueError(f"unknown reasons target {settings.target!r}")
    drop = {"context", "encoder", "owner_names", "reasons", "targets"}
    metadata = {k: v for k, v in meta.items() if k not in drop}
    names = {str(k): str(v) for k, v in dict(meta["owner_names"]).items()}
    return ScoringModel(context, encoder, targets, references, names, metadata, settings)
