"""Exports: TOML round-trips to the same submission, CSV is stable, writes are atomic and never clobber."""

from __future__ import annotations

import csv
import io
import os
import stat
import tomllib
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cockpit.export import (
    HYGIENE_COLUMNS,
    SUBMISSION_COLUMNS,
    ExportError,
    hygiene_to_csv,
    read_submission_toml,
    submission_from_toml,
    submission_to_csv,
    submission_to_toml,
    write_atomic,
    write_hygiene_csv,
    write_submission_csv,
    write_submission_toml,
)
from cockpit.forecast.flags import DealFlags, Flag, FlagKind
from cockpit.models import ForecastCategory
from cockpit.models.submission import ModelRange, Submission, SubmissionLine, line_totals

UTC = UTC
NOW = datetime(2026, 8, 10, 9, 30, 15, 123456, tzinfo=UTC)


def make(
    lines: list[SubmissionLine],
    *,
    sub_id: int | None = 7,
    model: bool = True,
    number: str | None = None,
    reason: str = "",
) -> Submission:
    totals = line_totals(lines)
    return Submission(
        id=sub_id,
        quarter="FY2026-Q3",
        scope="m1",
        author="李娜",
        created_at=NOW,
        currency="CNY",
        totals=totals,
        manager_number=Decimal(number) if number is not None else totals.commit_forecast,
        reason=reason,
        model=ModelRange(expected=Decimal("1.5"), p10=Decimal("1"), p50=Decimal("1.5"), p90=Decimal("2.25"))
        if model
        else None,
        model_version="gbm 2026-08-01",
        data_fingerprint="f" * 32,
        lines=tuple(lines),
    )


LINES = [
    SubmissionLine(
        opportunity_id="006B",
        name="上海云图科技 数据平台",
        owner_id="r1",
        pipeline_id="nb",
        stage_id="negotiate",
        amount=Decimal("120000.00"),
        currency="CNY",
        close_date=date(2026, 9, 30),
        category=ForecastCategory.COMMIT,
        note='said "yes" on the call\nsecond line',
        reviewed=True,
    ),
    SubmissionLine(
        opportunity_id="006A",
        name='=HYPERLINK("x")',
        owner_id="r2",
        pipeline_id="nb",
        stage_id="proposal",
        amount=Decimal("1000"),
        currency="USD",
        fx_rate=Decimal("7.1234"),
        close_date=None,
        category=ForecastCategory.BEST_CASE,
        amount_override=Decimal("900.5"),
        close_date_override=date(2026, 9, 1),
        note="-risky",
    ),
    SubmissionLine(
        opportunity_id="006C",
        owner_id="r2",
        pipeline_id="nb",
        stage_id="won",
        amount=Decimal("5"),
        currency="CNY",
        won=True,
        category=ForecastCategory.CLOSED,
    ),
]


def walk(value):
    if isinstance(value, dict):
        for v in value.values():
            yield from walk(v)
    elif isinstance(value, list):
        for v in value:
            yield from walk(v)
    else:
        yield value


# --------------------------------------------------------------------------- TOML


def test_toml_round_trip_is_the_same_submission():
    sub = make(LINES, number="200000", reason="Globex lands early")
    text = submission_to_toml(sub)
    assert submission_from_toml(text) == sub
    assert not any(isinstance(v, float) for v in walk(tomllib.loads(text)))
    assert 'manager_number = "200000"' in text and 'amount = "120000.00"' in text
    assert text.index('opportunity_id = "006A"') < text.index('opportunity_id = "006B"')


def test_toml_leaves_out_what_is_absent_and_reads_it_back():
    sub = make(LINES[2:], sub_id=None, model=False)
    text = submission_to_toml(sub)
    assert "[model]" not in text and "\nid =" not in text and "amount_override" not in text
    assert submission_from_toml(text) == sub


def test_toml_is_stable_and_diffs_line_by_line():
    week1 = submission_to_toml(make(LINES))
    assert submission_to_toml(make(list(reversed(LINES)))) == week1
    changed = [LINES[0].model_copy(update={"category": ForecastCategory.BEST_CASE}), *LINES[1:]]
    week2 = submission_to_toml(make(changed))
    diff = [(a, b) for a, b in zip(week1.splitlines(), week2.splitlines()) if a != b]
    assert len(week1.splitlines()) == len(week2.splitlines())
    assert ('category = "commit"', 'category = "best_case"') in diff
    assert len(diff) == 4  # totals.commit, totals.best_case, manager_number and the one line's category


def test_toml_reader_errors_are_specific():
    good = submission_to_toml(make(LINES))
    with pytest.raises(ExportError, match="x.toml: format is 'other'"):
        submission_from_toml(good.replace('format = "deal-cockpit/submission"', 'format = "other"'), "x.toml")
    with pytest.raises(ExportError, match="format_version is 9"):
        submission_from_toml(good.replace("format_version = 1", "format_version = 9"))
    with pytest.raises(ExportError, match="lines\\[0\\].amount = 1000.0; write money as a string"):
        submission_from_toml(good.replace('amount = "1000"', "amount = 1000.0"))
    with pytest.raises(ExportError, match="lines\\[1\\] \\(deal 006B\\).category"):
        submission_from_toml(good.replace('category = "commit"', 'category = "maybe"'))
    with pytest.raises(ExportError, match="totals.commit is 1 but the lines add up to"):
        submission_from_toml(good.replace('commit = "120000.00"', 'commit = "1"'))
    with pytest.raises(ExportError, match="Not valid TOML"):
        submission_from_toml("lines = [")


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
            st.decimals(min_value=0, max_value=10**9, places=2),
            st.sampled_from(list(ForecastCategory)),
            st.one_of(st.none(), st.decimals(min_value=0, max_value=10**9, places=3)),
            st.one_of(st.none(), st.dates(min_value=date(2020, 1, 1), max_value=date(2030, 12, 31))),
            st.text(max_size=30),
        ),
        max_size=8,
    )
)
def test_toml_round_trip_property(rows):
    lines = [
        SubmissionLine(
            opportunity_id=f"d{i:03d}",
            name=name,
            owner_id="r1",
            pipeline_id="nb",
            stage_id="s",
            amount=amount,
            currency="CNY",
            category=cat,
            won=cat is ForecastCategory.CLOSED,
            amount_override=override,
            close_date=day,
            note=note,
        )
        for i, (name, amount, cat, override, day, note) in enumerate(rows)
    ]
    sub = make(lines)
    assert submission_from_toml(submission_to_toml(sub)) == sub


# --------------------------------------------------------------------------- CSV


def test_submission_csv_rows_and_header():
    text = submission_to_csv(make(LINES))
    assert text.splitlines()[0] == ",".join(SUBMISSION_COLUMNS)
    assert "\r\n" in text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["opportunity_id"] for r in rows] == ["006A", "006B", "006C"]
    a, b, c = rows
    assert a["name"] == '\'=HYPERLINK("x")' and a["note"] == "'-risky"  # never a formula
    assert a["value"] == "6414.62" and a["fx_rate"] == "7.1234" and a["amount_override"] == "900.5"
    assert a["close_date"] == "" and a["close_date_override"] == "2026-09-01"
    assert b["note"] == 'said "yes" on the call\nsecond line' and b["reviewed"] == "true"
    assert c["won"] == "true" and c["category"] == "closed" and c["submission_id"] == "7"
    assert {r["reporting_currency"] for r in rows} == {"CNY"}


def test_hygiene_csv():
    rows = [
        DealFlags(
            "006A",
            "=cmd",
            "r1",
            "proposal",
            Decimal("10.50"),
            "CNY",
            None,
            (Flag(FlagKind.NO_CLOSE_DATE, "no close date"), Flag(FlagKind.NEXT_STEP_MISSING, "no next step")),
        ),
    ]
    text = hygiene_to_csv(rows)
    assert text.splitlines()[0] == ",".join(HYGIENE_COLUMNS)
    got = list(csv.DictReader(io.StringIO(text)))[0]
    assert (
        got["issues"] == "no_close_date;next_step_missing" and got["details"] == "no close date; no next step"
    )
    assert got["name"] == "'=cmd" and got["amount"] == "10.50"


# --------------------------------------------------------------------------- atomic writes


def test_write_refuses_to_overwrite_without_force(tmp_path):
    path = tmp_path / "q3.toml"
    sub = make(LINES)
    write_submission_toml(sub, path)
    assert read_submission_toml(path) == sub
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o644
    with pytest.raises(ExportError, match="already exists; use --force"):
        write_submission_toml(sub, path)
    changed = make(LINES, number="1", reason="testing")
    write_submission_toml(changed, path, force=True)
    assert read_submission_toml(path).manager_number == Decimal(1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q3.toml"]  # no temp file left behind


def test_write_errors(tmp_path):
    with pytest.raises(ExportError, match="does not exist; create it"):
        write_atomic(tmp_path / "missing" / "x.csv", b"x")
    with pytest.raises(ExportError, match="is a directory"):
        write_atomic(tmp_path, b"x")
    write_submission_csv(make(LINES), tmp_path / "s.csv")
    write_hygiene_csv([], tmp_path / "h.csv")
    assert (tmp_path / "h.csv").read_bytes() == (",".join(HYGIENE_COLUMNS) + "\r\n").encode()


def test_a_failed_write_leaves_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "q3.csv"
    path.write_text("old")

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    with pytest.raises(ExportError, match="No space left on device"):
        write_atomic(path, b"new", force=True)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["q3.csv"]


def test_reading_a_missing_or_foreign_file(tmp_path):
    with pytest.raises(ExportError, match="Cannot read"):
        read_submission_toml(tmp_path / "nope.toml")
    bad = tmp_path / "gbk.toml"
    bad.write_bytes("名字".encode("gbk"))
    with pytest.raises(ExportError, match="is not UTF-8"):
        read_submission_toml(bad)
