"""Model files: round trip, and refusal of unsafe, damaged, foreign or out-of-date files."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from cockpit.models import ForecastCategory
from cockpit.scoring import ModelFileError, ScoringConfig, data_fingerprint, load_model, save_model, train
from cockpit.scoring.files import FORMAT_VERSION
from tests.test_scoring import CALENDAR, END, OWNERS, PIPELINE, synth_histories


@pytest.fixture(scope="module")
def histories():
    return synth_histories(500, seed=21)


@pytest.fixture(scope="module")
def model(histories):
    return train(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(min_deals_for_boosting=100)).model


@pytest.fixture()
def saved(model, tmp_path) -> Path:
    path = tmp_path / "win-model.npz"
    save_model(model, path)
    return path


def _rewrite(path: Path, change) -> None:
    """Load the archive's arrays, let `change(arrays, meta)` edit them, write it back (no pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {k: archive[k] for k in archive.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    change(arrays, meta)
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with path.open("wb") as handle:
        np.savez(handle, **arrays)


def test_a_saved_model_scores_exactly_like_the_original(model, saved, histories):
    loaded = load_model(saved, expected_fingerprint=model.fingerprint)
    open_deals = [h for h in histories if not h.deal.is_closed]
    assert loaded.score(open_deals, END) == model.score(open_deals, END)
    assert loaded.version == model.version
    meta = loaded.metadata
    assert meta["fingerprint"] == data_fingerprint(histories)
    assert meta["features"] == model.metadata["features"]
    assert set(meta["training_window"]) == {"first_close", "last_close"}
    assert meta["report"]["targets"]["won"]["metrics"]["model"]["brier"] > 0


def test_the_owners_call_habits_survive_the_round_trip(tmp_path):
    calls = [ForecastCategory.PIPELINE, ForecastCategory.BEST_CASE, ForecastCategory.COMMIT, None]
    histories = [
        h.model_copy(
            update={
                "changes": tuple(
                    c.model_copy(update={"forecast_category": calls[(i + k) % len(calls)]})
                    for k, c in enumerate(h.changes)
                )
            }
        )
        for i, h in enumerate(synth_histories(300, seed=5))
    ]
    model = train(histories, [PIPELINE], OWNERS, CALENDAR, ScoringConfig(min_deals_for_boosting=100)).model
    assert model.context.call_events.calls.sum() > 0
    save_model(model, tmp_path / "model.npz")
    loaded = load_model(tmp_path / "model.npz")
    before, after = model.context.call_events, loaded.context.call_events
    assert after.owner_ids == before.owner_ids and after.through_day == before.through_day
    for name in ("owner", "day", "calls", "lift"):
        assert np.array_equal(getattr(after, name), getattr(before, name))
    open_deals = [h for h in histories if not h.deal.is_closed]
    assert loaded.score(open_deals, END) == model.score(open_deals, END)


def test_the_fingerprint_follows_the_closed_deals_only(histories):
    base = data_fingerprint(histories)
    assert data_fingerprint(list(reversed(histories))) == base
    open_ = next(h for h in histories if not h.deal.is_closed)
    assert data_fingerprint([h for h in histories if h is not open_]) == base
    closed = next(h for h in histories if h.deal.is_closed)
    assert data_fingerprint([h for h in histories if h is not closed]) != base


def test_a_model_trained_on_other_data_is_refused(saved):
    with pytest.raises(ModelFileError) as err:
        load_model(saved, expected_fingerprint="0" * 64)
    assert err.value.title == "Model trained on other data"
    assert "cockpit train" in err.value.message


def test_a_file_from_another_format_version_is_refused(saved):
    _rewrite(saved, lambda arrays, meta: meta.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ModelFileError) as err:
        load_model(saved)
    assert err.value.title == "Model file from another version"
    assert f"format {FORMAT_VERSION + 1}" in err.value.message and "cockpit train" in err.value.message


class _Payload:
    """Pickling this runs code when unpickled: a file that would prove a pickle was loaded."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_a_file_with_a_pickled_object_is_refused_without_running_it(saved, tmp_path):
    marker = tmp_path / "marker.txt"
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    buffer = io.BytesIO()
    np.save(buffer, evil, allow_pickle=True)
    with zipfile.ZipFile(saved, "a") as archive:
        archive.writestr("references.npy", buffer.getvalue())  # shadows the real array
    with pytest.raises(ModelFileError) as err:
        load_model(saved)
    assert err.value.title == "Unsafe model file"
    assert not marker.exists()


def test_a_pickle_file_is_not_a_model(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "model.npz"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(ModelFileError) as err:
        load_model(path)
    assert err.value.title == "Unsafe model file" and "not loaded" in err.value.message
    assert not marker.exists()


def test_a_tree_pointing_outside_itself_is_refused(saved):
    def damage(arrays, meta):
        left = arrays["target.won.node.left"].copy()
        inner = np.flatnonzero(arrays["target.won.node.is_leaf"] == 0)
        left[inner[0]] = 10_000
        arrays["target.won.node.left"] = left

    _rewrite(saved, damage)
    with pytest.raises(ModelFileError) as err:
        load_model(saved)
    assert err.value.title == "Damaged model file" and "outside its tree" in err.value.message


def test_a_file_with_a_wrong_shape_is_refused(saved):
    _rewrite(saved, lambda arrays, meta: arrays.update(references=arrays["references"][:, :2]))
    with pytest.raises(ModelFileError, match="reference deals have the wrong shape"):
        load_model(saved)


def test_forecast_calls_out_of_order_are_refused(saved):
    def damage(arrays, meta):
        meta["context"]["call_owner_ids"] = ["ann"]
        arrays.update({"calls.owner": np.array([0, 0]), "calls.day": np.array([739_000, 738_990])})
        arrays.update({"calls.calls": np.array([1, 2]), "calls.lift": np.array([1.0, -1.0])})

    _rewrite(saved, damage)
    with pytest.raises(ModelFileError, match="forecast calls are not sorted"):
        load_model(saved)


def test_missing_and_foreign_files_get_clear_messages(tmp_path):
    with pytest.raises(ModelFileError) as err:
        load_model(tmp_path / "nothing.npz")
    assert err.value.title == "No model yet" and "cockpit train" in err.value.message
    other = tmp_path / "other.npz"
    np.savez(other, x=np.arange(3))
    with pytest.raises(ModelFileError, match="no cockpit metadata"):
        load_model(other)


def test_saving_replaces_the_file_atomically(model, saved):
    before = saved.read_bytes()
    save_model(model, saved)
    assert saved.read_bytes() == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]


def test_a_context_shift_survives_the_round_trip_and_a_damaged_one_is_refused(model, tmp_path, histories):
    import copy

    from cockpit.scoring.estimators import ContextShift

    shifted = copy.deepcopy(model)
    days, amount, currency = ContextShift.columns(shifted.encoder.specs)
    assert min(days, amount, currency) >= 0
    shifted.targets["in_quarter"].calibrator.shift = ContextShift(
        days, amount, currency, medians=np.array([10.5, 11.0, 10.8]),
        weights=np.array([0.1, 0.3, 0.1, 0.0, -0.1, -0.2, -0.4]),
    )
    path = tmp_path / "shifted.npz"
    save_model(shifted, path)
    loaded = load_model(path)
    open_deals = [h for h in histories if not h.deal.is_closed]
    scores = loaded.score(open_deals, END)
    assert scores == shifted.score(open_deals, END)
    assert scores != model.score(open_deals, END)  # the shift moved the in-quarter probabilities

    def damage(arrays, meta):
        arrays["target.in_quarter.shift_weights"] = arrays["target.in_quarter.shift_weights"][:3]

    _rewrite(path, damage)
    with pytest.raises(ModelFileError, match="context shift"):
        load_model(path)
