"""The CSV import connector: default schema, mappings, errors, encodings, batches and the Maven CRM data."""

from __future__ import annotations

import csv
import shutil
import tempfile
from collections import Counter
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import connectors
from cockpit.models import ForecastCategory, Opportunity, OrgTree, StageChange, SyncProgress
from connectors import ConnectorError
from connectors._csvmap import BadValue, Formats, Parsers
from connectors.csv import CsvConnector, CsvImport, CsvImportError, RowError
from tests.shared_data import MAVEN

FIXTURES = Path(__file__).parent / "fixtures" / "csv"
REPO = Path(__file__).parents[1]
MAVEN_MAPPING = REPO / "examples" / "maven-crm.toml"


def load(name: str, **options) -> CsvImport:
    return CsvConnector(FIXTURES / name, **options).load()


def copy_fixture(name: str, tmp_path: Path) -> Path:
    target = tmp_path / name
    shutil.copytree(FIXTURES / name, target)
    return target


def errors_of(source: Path, **options) -> list[RowError]:
    with pytest.raises(CsvImportError) as info:
        CsvConnector(source, **options).load()
    return info.value.errors


def by_id(imported: CsvImport) -> dict[str, Opportunity]:
    return {o.id: o for o in imported.opportunities}


def history(imported: CsvImport, opp_id: str) -> list[StageChange]:
    return [c for c in imported.changes if c.opportunity_id == opp_id]


# --------------------------------------------------------------------------- default schema


class TestDefaultSchema:
    def test_every_file_is_read(self):
        imported = load("basic")
        assert [p.id for p in imported.pipelines] == ["New Business", "Renewal"]
        assert [o.id for o in imported.opportunities] == ["D1", "D2", "D3", "D4", "D5", "D6"]
        assert len(imported.activities) == 3
        assert imported.skipped == [] and imported.warnings == []

    def test_crlf_file_reads_like_any_other(self):
        assert b"\r\n" in (FIXTURES / "basic" / "opportunities.csv").read_bytes()
        deal = by_id(load("basic"))["D1"]
        assert deal.name == "Acme expansion" and deal.attributes["seats"] == 25.0

    def test_pipelines_file_gives_stages_in_order_with_closed_last(self):
        new_business = load("basic").pipelines[0]
        assert [s.name for s in new_business.stages] == [
            "Qualify",
            "Proposal",
            "Negotiate",
            "Closed Won",
            "Closed Lost",
        ]
        proposal = new_business.stage("New Business/Proposal")
        assert proposal.probability == Decimal("0.4") and proposal.category is ForecastCategory.BEST_CASE
        assert new_business.won_stage.name == "Closed Won" and new_business.lost_stage.name == "Closed Lost"

    def test_values_are_parsed_into_domain_types(self):
        deals = by_id(load("basic"))
        d1 = deals["D1"]
        assert d1.amount == Decimal("12500.00") and d1.currency == "USD"
        assert d1.created_at == datetime(2026, 1, 10, 9, tzinfo=UTC)
        assert d1.close_date == date(2026, 6, 30) and d1.next_step_date == date(2026, 3, 10)
        assert d1.forecast_category is ForecastCategory.BEST_CASE and d1.lead_source == "Outbound"
        assert deals["D2"].amount == Decimal(80000)  # "$80000"
        assert deals["D4"].amount == Decimal(45000) and deals["D4"].currency == "CNY"
        assert deals["D6"].currency == "USD"  # "usd"

    def test_probability_is_kept_only_where_it_differs_from_the_stage(self):
        deals = by_id(load("basic"))
        assert deals["D1"].probability is None  # 40% = the Proposal default
        assert deals["D4"].probability == Decimal("0.9")  # "90" against a default of 0.8

    def test_closed_flags_and_close_time_come_from_the_stage(self):
        deals = by_id(load("basic"))
        assert deals["D2"].is_won and deals["D2"].closed_at == datetime(2026, 2, 20, tzinfo=UTC)
        assert deals["D3"].is_closed and not deals["D3"].is_won
        assert not deals["D1"].is_closed and deals["D1"].closed_at is None

    def test_owners_resolve_managers_by_id_or_name(self):
        imported = load("basic")
        owners = {o.id: o for o in imported.owners}
        assert owners["u3"].manager_id == "u1"  # manager given as "Ada Park"
        assert OrgTree(imported.owners).subtree("u1") == ["u1", "u2", "u4", "u3"]
        assert by_id(imported)["D2"].owner_id == "u3"  # owner given as "Chen Li"

    def test_extra_columns_become_typed_attributes(self):
        deals = by_id(load("basic"))
        assert deals["D1"].attributes == {"region": "EMEA", "seats": 25.0}
        assert deals["D3"].attributes == {"region": "EMEA"}  # blank seats: no value

    def test_given_history_is_sorted_and_completed(self):
        rows = history(load("basic"), "D1")
        assert [r.stage_id for r in rows] == ["New Business/Qualify", "New Business/Proposal"]
        assert [r.amount for r in rows] == [Decimal(10000), Decimal(12500)]
        d2 = history(load("basic"), "D2")
        assert d2[0].amount == Decimal(75000)  # a blank amount is filled from the next known one

    def test_close_time_comes_from_the_history_when_it_has_one(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        path = source / "stage_history.csv"
        path.write_text(
            path.read_text().replace("D2,2026-02-20,Closed Won", "D2,2026-02-20T15:30:00Z,Closed Won")
        )
        deal = by_id(CsvConnector(source).load())["D2"]
        assert deal.closed_at == datetime(2026, 2, 20, 15, 30, tzinfo=UTC)

    def test_closed_deal_without_history_gets_a_synthesized_one(self):
        rows = history(load("basic"), "D3")
        assert [(r.changed_at.date(), r.stage_id) for r in rows] == [
            (date(2025, 12, 1), "New Business/Qualify"),
            (date(2026, 1, 15), "New Business/Closed Lost"),
        ]

    def test_open_deal_without_history_gets_one_row_at_creation(self):
        rows = history(load("basic"), "D4")
        assert [(r.changed_at.date(), r.stage_id) for r in rows] == [(date(2026, 2, 1), "Renewal/Open")]

    def test_activities_fill_a_blank_last_activity(self):
        deals = by_id(load("basic"))
        assert deals["D1"].last_activity == date(2026, 3, 5)
        assert deals["D3"].last_activity == date(2026, 1, 10)

    def test_every_model_survives_revalidation(self):
        imported = load("basic")
        for model in [*imported.opportunities, *imported.changes, *imported.activities, *imported.owners]:
            assert type(model).model_validate(model.model_dump()) == model

    def test_the_registry_builds_it(self):
        connector = connectors.create("csv", source=FIXTURES / "basic")
        assert isinstance(connector, CsvConnector) and connector.name == "csv"


# --------------------------------------------------------------------------- errors


class TestErrors:
    def test_every_error_is_listed_with_file_line_column_value(self):
        errors = errors_of(FIXTURES / "errors")
        found = {(e.file, e.line, e.column, e.value) for e in errors}
        assert found == {
            ("opportunities.csv", 3, "created", "2026-13-01"),
            ("opportunities.csv", 4, "amount", "12abc"),
            ("opportunities.csv", 5, "amount", "-5"),
            ("opportunities.csv", 6, "currency", "XYZ"),
            ("opportunities.csv", 7, "id", "E6"),
            ("opportunities.csv", 8, "id", "E6"),
            ("opportunities.csv", 9, "close_date", "2026-01-05"),
            ("opportunities.csv", 10, "stage", "Won't"),
            ("opportunities.csv", 11, "pipeline", "Partners"),
            ("opportunities.csv", 12, "owner", "Nobody"),
            ("stage_history.csv", 3, "opportunity_id", "NOPE"),
            ("owners.csv", 2, "manager", "u2"),
            ("owners.csv", 3, "manager", "u1"),
            ("owners.csv", 4, "manager", "u3"),
        }

    def test_messages_say_what_was_expected(self):
        errors = {
            (e.line, e.column): str(e)
            for e in errors_of(FIXTURES / "errors")
            if e.file == "opportunities.csv"
        }
        assert (
            errors[(5, "amount")]
            == "opportunities.csv line 5, column amount: '-5' \u2014 expected a non-negative amount"
        )
        assert "expected a date like 2026-03-31" in errors[(3, "created")]
        assert "ISO 4217" in errors[(6, "currency")]
        assert "also on line 8" in errors[(7, "id")] and "also on line 7" in errors[(8, "id")]
        assert "on or after the creation date 2026-01-10" in errors[(9, "close_date")]
        assert "one of: Qualify, Proposal" in errors[(10, "stage")]
        assert "one of: New Business, Renewal" in errors[(11, "pipeline")]

    def test_manager_cycle_names_the_loop(self):
        errors = [str(e) for e in errors_of(FIXTURES / "errors") if e.file == "owners.csv"]
        assert any("u1 \u2192 u2 \u2192 u1" in e for e in errors)
        assert any("u3 \u2192 u3" in e for e in errors)

    def test_the_error_is_a_connector_error_with_a_capped_message(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        rows = "".join(
            f"X{i},Name,Acme,u2,New Business,Proposal,-{i + 1},USD,2026-06-30,2026-01-10\n" for i in range(25)
        )
        (source / "opportunities.csv").write_text(
            "id,name,account,owner,pipeline,stage,amount,currency,close_date,created\n" + rows
        )
        for extra in ("stage_history.csv", "activities.csv"):
            (source / extra).unlink()
        with pytest.raises(ConnectorError) as info:
            CsvConnector(source).load()
        message = info.value.message
        assert message.startswith("25 problems found, nothing was imported")
        assert message.count("\n- ") == 20 and message.endswith("... and 5 more")
        assert len(info.value.errors) == 25

    def test_missing_required_column_names_the_header_found(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        text = (source / "opportunities.csv").read_text()
        (source / "opportunities.csv").write_text(text.replace(",currency,", ",curr,", 1))
        [error] = errors_of(source)
        assert (error.file, error.line, error.column) == ("opportunities.csv", 1, "currency")
        assert "the header has: id, name, account, owner, pipeline, stage, amount, curr" in error.expected

    def test_empty_and_unreadable_files(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        (source / "owners.csv").write_text("")
        (source / "pipelines.csv").unlink()
        (source / "pipelines.csv").mkdir()
        errors = {e.file: str(e) for e in errors_of(source)}
        assert errors["owners.csv"] == "owners.csv: expected a header line and data rows (the file is empty)"
        assert errors["pipelines.csv"].startswith("pipelines.csv: expected a readable file")

    def test_header_without_rows_is_an_empty_import(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        (source / "opportunities.csv").write_text(
            "id,name,account,owner,stage,amount,currency,close_date,created\n"
        )
        errors = errors_of(source)
        assert [str(e) for e in errors] == [
            "opportunities.csv: expected at least one opportunity (the file has only a header)"
        ]

    def test_missing_source_or_opportunities_file(self, tmp_path):
        [error] = errors_of(tmp_path / "nowhere")
        assert "a directory" in error.expected
        [error] = errors_of(tmp_path)
        assert error.file == "opportunities.csv" and str(tmp_path) in error.expected

    def test_unclosed_quote_names_the_line(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        with (source / "opportunities.csv").open("a") as out:
            out.write('D9,"broken,Acme,u2\n')
        [error] = errors_of(source)
        assert (error.file, error.line) == ("opportunities.csv", 8)
        assert "never closed" in error.expected

    def test_lines_are_physical_lines_across_quoted_newlines(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        text = (source / "opportunities.csv").read_text().replace("Acme expansion", '"Acme\nexpansion"')
        text = text.replace(
            "D2,Beta rollout,Beta,Chen Li,New Business,Closed Won,$80000",
            "D2,Beta rollout,Beta,Chen Li,New Business,Closed Won,lots",
        )
        (source / "opportunities.csv").write_text(text)
        [error] = errors_of(source)
        assert (error.line, error.column, error.value) == (4, "amount", "lots")

    def test_row_longer_than_header(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        lines = (source / "activities.csv").read_text().splitlines()
        lines[2] += ",surplus"
        (source / "activities.csv").write_text("\n".join(lines) + "\n")
        [error] = errors_of(source)
        assert (error.file, error.line, error.value) == ("activities.csv", 3, "surplus")

    def test_a_closed_deal_needs_a_close_date(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        text = (source / "opportunities.csv").read_text().replace("3000,EUR,2026-01-15,", "3000,EUR,,")
        (source / "opportunities.csv").write_text(text)
        [error] = errors_of(source)
        assert (error.line, error.column) == (
            4,
            "close_date",
        ) and "closed stage 'Closed Lost'" in error.expected

    def test_history_row_with_an_unknown_stage(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        with (source / "stage_history.csv").open("a") as out:
            out.write("D1,2026-02-20,Demo,,,\n")
        [error] = errors_of(source)
        assert (error.file, error.line, error.column, error.value) == (
            "stage_history.csv",
            7,
            "stage",
            "Demo",
        )


class TestSkipBadRows:
    def test_bad_rows_are_left_out_and_reported(self):
        imported = load("errors", skip_bad_rows=True)
        assert [o.id for o in imported.opportunities] == ["E1"]
        reported = {(e.file, e.line) for e in imported.skipped}
        assert ("opportunities.csv", 5) in reported and ("stage_history.csv", 3) in reported
        assert {o.id for o in imported.owners} == {"u4"}  # the three owners in manager loops are skipped

    def test_rows_of_skipped_deals_in_other_files_are_reported(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        text = (
            (source / "opportunities.csv")
            .read_text()
            .replace("D3,Gamma pilot,Gamma,u4", "D3,Gamma pilot,Gamma,u9")
        )
        (source / "opportunities.csv").write_text(text)
        imported = CsvConnector(source, skip_bad_rows=True).load()
        assert "D3" not in by_id(imported)
        assert [(e.file, e.line) for e in imported.skipped] == [
            ("opportunities.csv", 4),
            ("activities.csv", 4),
        ]
        assert "opportunities.csv line 4 was skipped" in imported.skipped[1].expected

    def test_file_level_problems_still_stop_the_import(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        (source / "owners.csv").write_text("")
        with pytest.raises(CsvImportError):
            CsvConnector(source, skip_bad_rows=True).load()


# --------------------------------------------------------------------------- encodings


class TestEncodings:
    def test_gb18030_export_is_detected_and_warned(self):
        imported = load("gbk")
        assert any("opportunities.csv" in w and "GB18030" in w for w in imported.warnings)
        deals = by_id(imported)
        assert deals["C1"].name == "云服务采购" and deals["C1"].owner_id == "张伟"
        assert deals["C1"].amount == Decimal(120000) and deals["C1"].currency == "CNY"  # 人民币
        assert deals["C3"].currency == "CNY" and deals["C2"].amount == Decimal(300000)  # RMB, ¥300000
        assert deals["C2"].close_date == date(2026, 3, 1)  # 2026年3月1日

    def test_bom_is_removed_and_warned(self):
        imported = load("gbk")
        assert any("stage_history.csv" in w and "byte-order mark" in w for w in imported.warnings)
        assert len(history(imported, "C2")) == 3

    def test_utf16_with_bom(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        path = source / "owners.csv"
        path.write_bytes(path.read_text().encode("utf-16"))
        imported = CsvConnector(source).load()
        assert len(imported.owners) == 4 and any("UTF-16" in w for w in imported.warnings)

    def test_undecodable_file_names_the_byte_offset(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        (source / "activities.csv").write_bytes(b"opportunity_id,date,kind\nD1,2026-02-01,\x80\xff\n")
        [error] = errors_of(source)
        assert error.file == "activities.csv" and "byte offset 39" in error.expected

    def test_mapping_can_name_the_encoding(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        path = source / "owners.csv"
        path.write_bytes(path.read_text().replace("Dee Moss", "Dée Moss").encode("cp1252"))
        mapping = tmp_path / "m.toml"
        mapping.write_text('[csv]\nencoding = "cp1252"\n')
        owners = {o.id: o.name for o in CsvConnector(source, mapping).load().owners}
        assert owners["u4"] == "Dée Moss"


# --------------------------------------------------------------------------- inference and mappings


class TestInference:
    def test_stages_are_ordered_by_history_and_won_lost_recognised(self):
        [pipeline] = load("gbk").pipelines
        assert pipeline.name == "Sales"
        assert [(s.name, s.is_closed, s.is_won) for s in pipeline.stages] == [
            ("初步接洽", False, False),
            ("方案报价", False, False),
            ("赢单", True, True),
            ("输单", True, False),
        ]

    def test_owners_come_from_the_owner_column(self):
        assert sorted(o.id for o in load("gbk").owners) == ["张伟", "李娜", "王芳"]

    def test_closed_flag_columns_teach_which_stages_are_closed(self, tmp_path):
        (tmp_path / "opportunities.csv").write_text(
            "id,name,account,owner,stage,amount,currency,close_date,created,won,closed\n"
            "A,a,x,o,Signed,10,USD,2026-02-01,2026-01-01,yes,yes\n"
            "B,b,x,o,Dropped,10,USD,2026-02-01,2026-01-01,no,yes\n"
            "C,c,x,o,Talking,10,USD,2026-05-01,2026-01-01,,\n"
        )
        [pipeline] = CsvConnector(tmp_path).load().pipelines
        assert [(s.name, s.is_closed, s.is_won) for s in pipeline.stages] == [
            ("Talking", False, False),
            ("Signed", True, True),
            ("Dropped", True, False),
        ]


class TestMapping:
    def test_another_crm_export_through_a_mapping(self):
        imported = load("custom", mapping=FIXTURES / "custom" / "mapping.toml")
        deals = by_id(imported)
        assert deals["K-1"].amount == Decimal("1234.56") and deals["K-1"].currency == "EUR"  # "1.234,56 €"
        assert deals["K-1"].created_at == datetime(2026, 1, 2, 23, tzinfo=UTC)  # 03.01.2026 in Berlin
        assert deals["K-2"].is_won and deals["K-2"].amount == Decimal("1900.00")
        assert deals["K-3"].amount == Decimal("9500.00")  # lost with 0: the package's list price
        assert deals["K-4"].amount == Decimal("2000.00")  # blank: the list price
        assert deals["K-1"].attributes == {"Paket": "Pro", "paket_Listenpreis": 9500.0, "paket_Stufe": 2.0}

    def test_mapping_shapes_the_inferred_pipeline(self):
        [pipeline] = load("custom", mapping=FIXTURES / "custom" / "mapping.toml").pipelines
        assert pipeline.id == "Vertrieb"
        assert [(s.name, str(s.probability), s.category.value) for s in pipeline.stages] == [
            ("Erstkontakt", "0.1", "pipeline"),
            ("Angebot", "0.5", "best_case"),
            ("Won", "1", "closed"),
            ("Lost", "0", "omitted"),
        ]

    def test_initial_stage_starts_synthesized_histories(self):
        imported = load("custom", mapping=FIXTURES / "custom" / "mapping.toml")
        assert [r.stage_id for r in history(imported, "K-3")] == ["Vertrieb/Erstkontakt", "Vertrieb/Lost"]

    def test_bad_keys_are_reported_with_file_and_key(self, tmp_path):
        mapping = tmp_path / "bad.toml"
        mapping.write_text(
            '[opportunities]\nfle = "x.csv"\nkeep = 3\n[opportunities.columns]\nidd = "x"\n'
            '[formats]\ntimezone = "Mars/Base"\n[amount]\nfallback_when = "sometimes"\n'
        )
        with pytest.raises(CsvImportError) as info:
            CsvConnector(FIXTURES / "basic", mapping).load()
        errors = {e.column: e for e in info.value.errors}
        assert set(errors) == {
            "opportunities.fle",
            "opportunities.keep",
            "opportunities.columns.idd",
            "formats.timezone",
            "amount.fallback_when",
        }
        assert all(e.file == "bad.toml" and e.line == 0 for e in errors.values())
        assert "one of: file, columns, aliases, keep, drop" in errors["opportunities.fle"].expected
        assert str(errors["amount.fallback_when"]).startswith(
            "bad.toml, key amount.fallback_when: 'sometimes'"
        )
        assert info.value.title == "Bad CSV mapping"

    def test_toml_syntax_error_names_the_line(self, tmp_path):
        mapping = tmp_path / "bad.toml"
        mapping.write_text('[csv]\ndelimiter = ";"\n[opportunities\n')
        with pytest.raises(CsvImportError) as info:
            CsvConnector(FIXTURES / "basic", mapping).load()
        [error] = info.value.errors
        assert (error.file, error.line) == ("bad.toml", 3) and "valid TOML" in error.expected

    def test_names_in_the_mapping_must_exist_in_the_files(self, tmp_path):
        mapping = tmp_path / "m.toml"
        mapping.write_text(
            '[owners]\nfile = "team.csv"\n[opportunities.aliases.colour]\nred = "Red"\n'
            '[[joins]]\nfile = "owners.csv"\non = "region"\nkey = "nope"\n'
        )
        with pytest.raises(CsvImportError) as info:
            CsvConnector(FIXTURES / "basic", mapping).load()
        keys = {e.column for e in info.value.errors}
        assert keys == {"owners.file", "opportunities.aliases.colour", "joins.0.key"}

    def test_template_columns(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        mapping = tmp_path / "m.toml"
        mapping.write_text('[opportunities.columns]\nname = "{account} / {region}"\n')
        assert by_id(CsvConnector(source, mapping).load())["D1"].name == "Acme / EMEA"


# --------------------------------------------------------------------------- as_of


class TestAsOf:
    def test_the_crm_as_it_stood_on_a_day(self):
        imported = load("basic", as_of=date(2026, 1, 31))
        deals = by_id(imported)
        assert sorted(deals) == ["D1", "D2", "D3", "D5"]  # D4 and D6 were created later
        assert deals["D2"].stage_id == "New Business/Negotiate" and not deals["D2"].is_closed  # won on Feb 20
        assert deals["D2"].amount == Decimal(75000) and deals["D2"].closed_at is None
        assert deals["D3"].is_closed  # lost on Jan 15
        assert deals["D1"].last_activity is None  # its activities are in February and March
        assert all(a.on <= date(2026, 1, 31) for a in imported.activities)
        assert all(c.changed_at < datetime(2026, 2, 1, tzinfo=UTC) for c in imported.changes)
        for deal in imported.opportunities:
            assert Opportunity.model_validate(deal.model_dump()) == deal


# --------------------------------------------------------------------------- batches


class TestBatches:
    async def test_pipelines_and_owners_first_then_deals_with_their_histories(self, monkeypatch):
        monkeypatch.setattr("connectors.csv.BATCH_SIZE", 4)
        seen: list[SyncProgress] = []
        batches = [b async for b in CsvConnector(FIXTURES / "basic").batches(None, seen.append)]
        assert len(batches) == 3
        assert len(batches[0].pipelines) == 2 and len(batches[0].owners) == 4 and not batches[0].opportunities
        assert [len(b.opportunities) for b in batches[1:]] == [4, 2]
        for batch in batches[1:]:
            ids = {o.id for o in batch.opportunities}
            assert {c.opportunity_id for c in batch.changes} <= ids
            assert {a.opportunity_id for a in batch.activities} <= ids
        fingerprint = CsvConnector(FIXTURES / "basic").load().fingerprint
        assert [b.cursor for b in batches] == [fingerprint + ":partial"] * 2 + [fingerprint]
        assert seen[-1].records == 6 and seen[-1].total == 6

    async def test_errors_come_before_any_batch(self):
        received = []
        with pytest.raises(CsvImportError):
            async for batch in CsvConnector(FIXTURES / "errors").batches("old-cursor"):
                received.append(batch)
        assert received == []

    def test_fingerprint_follows_the_files(self, tmp_path):
        source = copy_fixture("basic", tmp_path)
        before = CsvConnector(source).load().fingerprint
        assert CsvConnector(source).load().fingerprint == before
        with (source / "activities.csv").open("a") as out:
            out.write("D2,2026-01-20,call\n")
        assert CsvConnector(source).load().fingerprint != before


# --------------------------------------------------------------------------- parsers (properties)

DATE_FORMATS = ["%Y-%m-%d", "%d/%m/%Y", "%m/%d/%Y", "%d.%m.%Y", "%Y年%m月%d日", "%d %b %Y", "%Y/%m/%d"]
SEPARATORS = [(".", ","), (",", "."), (".", ""), (",", " "), (".", "'")]
SYMBOLS = ["", "$", "€", "USD ", " EUR", "¥", "US$"]
PARSERS = Parsers()
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)


def group(digits: str, separator: str) -> str:
    parts = []
    while len(digits) > 3:
        parts.insert(0, digits[-3:])
        digits = digits[:-3]
    return separator.join([digits, *parts])


class TestParsers:
    @given(
        day=st.dates(min_value=date(1900, 1, 1), max_value=date(2999, 12, 31)),
        fmt=st.sampled_from(DATE_FORMATS),
    )
    def test_dates_round_trip_in_the_configured_format(self, day, fmt):
        assert Parsers(Formats(dates=[fmt])).date(day.strftime(fmt)) == day

    @given(
        moment=st.datetimes(min_value=datetime(1901, 1, 1), max_value=datetime(2998, 12, 31)),
        zone=st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York"]),
    )
    def test_datetimes_without_offset_are_read_in_the_mapping_zone(self, moment, zone):
        parsers = Parsers(Formats(dates=["%d/%m/%Y %H:%M:%S"], timezone=zone))
        moment = moment.replace(microsecond=0)
        parsed = parsers.datetime(moment.strftime("%d/%m/%Y %H:%M:%S"))
        assert parsed.tzinfo is UTC and parsed == moment.replace(tzinfo=parsers.zone).astimezone(UTC)

    @given(
        cents=st.integers(min_value=0, max_value=10**14 - 1),
        separators=st.sampled_from(SEPARATORS),
        symbol=st.sampled_from(SYMBOLS),
        negative=st.booleans(),
    )
    def test_amounts_with_separators_and_currency_signs(self, cents, separators, symbol, negative):
        decimal, thousands = separators
        value = Decimal(cents) / 100
        whole, fraction = f"{value:.2f}".split(".")
        text = group(whole, thousands) + decimal + fraction
        text = f"{symbol}{text}" if not symbol.startswith(" ") else f"{text}{symbol}"
        parsers = Parsers(Formats(decimal=decimal, thousands=thousands))
        if negative:
            text = "-" + text
            assert parsers.number(text)[0] == -value or value == 0
            if value:
                with pytest.raises(BadValue, match="non-negative"):
                    parsers.amount(text)
        else:
            assert parsers.amount(text)[0] == value

    @given(text=TEXT)
    def test_any_text_parses_or_is_a_bad_value(self, text):
        for parse in (
            PARSERS.date,
            PARSERS.datetime,
            PARSERS.number,
            PARSERS.amount,
            PARSERS.probability,
            PARSERS.integer,
            PARSERS.boolean,
            PARSERS.currency,
            PARSERS.category,
        ):
            try:
                parse(text)
            except BadValue as exc:
                assert exc.expected

    def test_numbers_that_are_not(self):
        for text in ("1,23", "1.234.5", "--5", "(-5)", "$-", "1e", "NaN", "inf", "1 2", "٣"):
            with pytest.raises(BadValue):
                PARSERS.number(text)
        assert PARSERS.number("(1,200.50)")[0] == Decimal("-1200.50")
        assert PARSERS.number("1.2E+3")[0] == Decimal(1200)
        assert PARSERS.probability("35%") == Decimal("0.35") and PARSERS.probability("0.35") == Decimal(
            "0.35"
        )

    @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(amount=TEXT, close_date=TEXT, stage=TEXT, owner=TEXT)
    def test_any_cell_text_imports_or_gives_row_errors(self, amount, close_date, stage, owner):
        with tempfile.TemporaryDirectory() as tmp:
            with open(Path(tmp) / "opportunities.csv", "w", newline="", encoding="utf-8") as out:
                writer = csv.writer(out)
                writer.writerow(
                    ["id", "name", "account", "owner", "stage", "amount", "currency", "close_date", "created"]
                )
                writer.writerow(["A", "a", "x", owner, stage, amount, "USD", close_date, "2026-01-01"])
            try:
                imported = CsvConnector(tmp).load()
            except CsvImportError as exc:
                assert exc.errors and all(isinstance(e, RowError) and e.expected for e in exc.errors)
            else:
                assert len(imported.opportunities) == 1


# --------------------------------------------------------------------------- performance


def test_ten_thousand_deals_import(tmp_path):
    stages = ["Qualify", "Proposal", "Negotiate", "Won", "Lost"]
    with (
        open(tmp_path / "opportunities.csv", "w", newline="") as out,
        open(tmp_path / "stage_history.csv", "w", newline="") as hist,
    ):
        deals, changes = csv.writer(out), csv.writer(hist)
        deals.writerow(
            [
                "id",
                "name",
                "account",
                "owner",
                "stage",
                "amount",
                "currency",
                "close_date",
                "created",
                "segment",
                "seats",
            ]
        )
        changes.writerow(["opportunity_id", "changed_at", "stage"])
        for i in range(10_000):
            stage = stages[i % 5]
            deals.writerow(
                [
                    f"O{i}",
                    f"Deal {i}",
                    f"Acct {i % 900}",
                    f"rep{i % 40}",
                    stage,
                    f"{1000 + i:,}.50",
                    "USD",
                    f"2026-{i % 12 + 1:02d}-28",
                    f"2025-{i % 12 + 1:02d}-01",
                    "SMB",
                    i % 70,
                ]
            )
            changes.writerow([f"O{i}", f"2025-{i % 12 + 1:02d}-01", "Qualify"])
            if stage != "Qualify":
                changes.writerow([f"O{i}", f"2025-{i % 12 + 1:02d}-15", stage])
    imported = CsvConnector(tmp_path).load()  # its speed: bench/ (about 1 s on one free core)
    assert len(imported.opportunities) == 10_000 and len(imported.changes) == 18_000


# --------------------------------------------------------------------------- the Maven CRM data

maven = pytest.mark.skipif(not MAVEN.is_dir(), reason=f"Maven CRM data not found at {MAVEN}")


@pytest.fixture(scope="module")
def maven_import() -> CsvImport:
    return CsvConnector(MAVEN, MAVEN_MAPPING).load()


@pytest.fixture(scope="module")
def maven_rows() -> dict[str, dict[str, str]]:
    with open(MAVEN / "sales_pipeline.csv", newline="") as raw:
        return {row["opportunity_id"]: row for row in csv.DictReader(raw)}


@maven
class TestMaven:
    def test_counts_by_stage(self, maven_import):
        assert len(maven_import.opportunities) == 8800
        stages = Counter(o.stage_id for o in maven_import.opportunities)
        assert stages == {
            "Maven/Won": 4238,
            "Maven/Lost": 2473,
            "Maven/Engaging": 1589,
            "Maven/Prospecting": 500,
        }
        assert maven_import.skipped == []

    def test_pipeline_and_owners(self, maven_import):
        [pipeline] = maven_import.pipelines
        assert [s.name for s in pipeline.stages] == ["Prospecting", "Engaging", "Won", "Lost"]
        owners = {o.id: o for o in maven_import.owners}
        assert len(owners) == 41  # 35 agents + 6 managers
        assert (
            owners["Moses Frase"].manager_id == "Dustin Brinkmann" and owners["Moses Frase"].team == "Central"
        )
        assert owners["Dustin Brinkmann"].manager_id is None and owners["Dustin Brinkmann"].team == "Central"
        assert len(OrgTree(maven_import.owners).roots) == 6

    def test_amounts_never_use_the_zero_close_value_of_lost_deals(self, maven_import, maven_rows):
        for deal in maven_import.opportunities:
            if deal.is_won:
                assert deal.amount == Decimal(maven_rows[deal.id]["close_value"])
            else:
                assert deal.amount == Decimal(str(int(deal.attributes["sales_price"])))
                assert deal.amount > 0
        assert "close_value" not in maven_import.opportunities[0].attributes

    def test_gtxpro_and_technolgy_are_resolved(self, maven_import, maven_rows):
        gtx_pro = [d for d in maven_import.opportunities if maven_rows[d.id]["product"] == "GTXPro"]
        assert len(gtx_pro) == 1480
        assert all(
            d.attributes["product"] == "GTX Pro" and d.attributes["sales_price"] == 4821.0 for d in gtx_pro
        )
        sectors = Counter(d.attributes.get("sector") for d in maven_import.opportunities)
        assert "technology" in sectors and "technolgy" not in sectors

    def test_attributes_are_typed(self, maven_import):
        deal = next(d for d in maven_import.opportunities if d.account)
        numeric = {"sales_price", "year_established", "revenue", "employees"}
        assert {k for k, v in deal.attributes.items() if isinstance(v, float)} == numeric
        assert all(
            isinstance(deal.attributes[k], str) for k in ("product", "series", "sector", "office_location")
        )

    def test_blank_accounts_and_undated_prospects_are_allowed(self, maven_import):
        deals = maven_import.opportunities
        assert sum(1 for d in deals if not d.account) == 1425
        prospects = [d for d in deals if d.stage_id == "Maven/Prospecting"]
        assert all(d.created_at is None and d.close_date is None for d in prospects)
        prospect_ids = {d.id for d in prospects}
        assert not any(c.opportunity_id in prospect_ids for c in maven_import.changes)

    def test_histories_engage_then_close_without_leaking_the_outcome(self, maven_import, maven_rows):
        rows: dict[str, list[StageChange]] = {}
        for change in maven_import.changes:
            rows.setdefault(change.opportunity_id, []).append(change)
        for deal in maven_import.opportunities:
            if deal.created_at is None:
                continue
            story = rows[deal.id]
            engage = datetime.fromisoformat(maven_rows[deal.id]["engage_date"]).replace(tzinfo=UTC)
            assert story[0].stage_id == "Maven/Engaging" and story[0].changed_at == engage == deal.created_at
            assert story[0].close_date is None and story[0].forecast_category is None
            assert story[0].amount == Decimal(str(int(deal.attributes["sales_price"])))
            if deal.is_closed:
                assert [c.stage_id for c in story] == ["Maven/Engaging", deal.stage_id]
                assert story[-1].changed_at == deal.closed_at and story[-1].amount == deal.amount
            else:
                assert len(story) == 1

    def test_every_model_survives_revalidation(self, maven_import):
        for model in [*maven_import.opportunities[:500], *maven_import.changes[:1000]]:
            assert type(model).model_validate(model.model_dump()) == model

    def test_open_pipeline_on_2017_10_01_matches_the_readme(self):
        imported = CsvConnector(MAVEN, MAVEN_MAPPING, as_of=date(2017, 9, 30)).load()
        dated_open = [d for d in imported.opportunities if not d.is_closed and d.created_at is not None]
        assert len(dated_open) == 2409
        start = datetime(2017, 10, 1, tzinfo=UTC)
        assert sum(1 for d in dated_open if (start - d.created_at).days > 138) == 535

    def test_without_the_product_alias_the_trap_is_reported(self, tmp_path):
        mapping = tmp_path / "no-alias.toml"
        mapping.write_text(MAVEN_MAPPING.read_text().replace('GTXPro = "GTX Pro"', ""))
        with pytest.raises(CsvImportError) as info:
            CsvConnector(MAVEN, mapping).load()
        assert len(info.value.errors) == 1480
        assert {(e.column, e.value) for e in info.value.errors} == {("product", "GTXPro")}
        assert "products.csv" in info.value.errors[0].expected
