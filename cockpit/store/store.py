"""The SQLite store: the local mirror of the CRM, sync runs, scores and model runs.

The only SQL in the project lives in this package. Times are stored as integer microseconds since
the epoch (UTC), dates as ISO text, money as Decimal text.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cockpit.models import (
    DealHistory,
    DealScore,
    DealSnapshot,
    ForecastCategory,
    Opportunity,
    Owner,
    Pipeline,
    Reason,
    Stage,
    StageChange,
    SyncBatch,
    complete_history,
    end_of_day,
)
from cockpit.models.trusted import construct_trusted as _build, gc_paused
from cockpit.store.schema import APPLICATION_ID, LIFESPAN_COLUMNS, MIGRATIONS, SCHEMA_VERSION

if TYPE_CHECKING:  # numpy is imported only by the columnar read (`Store.history_columns`)
    import numpy as np

    from cockpit.models.columns import HistoryColumns, ScoreColumns

log = logging.getLogger(__name__)

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class StoreError(Exception):
    """The store cannot be used: `title` is short, `message` says why and what to do."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


def to_us(value: datetime) -> int:
    """Aware datetime → integer microseconds since the epoch."""
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


_FLOAT_EXACT_US = 2**31 * 1_000_000
"""Below this (2038) a float of seconds is within 0.12 µs of the exact time, so `fromtimestamp`,
which rounds to the nearest microsecond, gives it back exactly."""


def from_us(value: int) -> datetime:
    """Integer microseconds since the epoch → aware UTC datetime (exact)."""
    if 0 <= value < _FLOAT_EXACT_US:
        return datetime.fromtimestamp(value / 1_000_000, timezone.utc)  # ~2x faster than the timedelta
    return _EPOCH + timedelta(microseconds=value)


def _owner_clause(owner_ids: Iterable[str], params: dict[str, Any]) -> str:
    """SQL: `o.owner_id` is one of `owner_ids` (bound as :o0, :o1, ... into `params`)."""
    names = []
    for n, owner in enumerate(owner_ids):
        params[f"o{n}"] = owner
        names.append(f":o{n}")
    return f"o.owner_id IN ({', '.join(names)})" if names else "0"


def _date(text: str | None) -> date | None:
    return date.fromisoformat(text) if text else None


def _iso(day: date | None) -> str | None:
    return day.isoformat() if day else None


_ORDINAL = "julianday({}) - 1721424.5"
"""SQL: the `date.toordinal` of an ISO date column (a float; NULL stays NULL). Exact: julianday
gives the half-integer Julian day of midnight, and 0001-01-01 (ordinal 1) is JD 1721425.5."""

_FLOAT_EXACT_INT = 2**53
"""Integers below this in magnitude are floats exactly."""


def _seconds(micros: Sequence[int | None]) -> np.ndarray:
    """Stored microseconds as seconds since the epoch (NaN for None), equal bit for bit to
    `from_us(us).timestamp()`: that divides the integer microseconds by 10**6, correctly rounded,
    and so does `float(us) / 1e6` while `us` is a float exactly (below 2**53 µs, years 1685-2255);
    beyond that, Python's int division does it (a few values at most)."""
    import numpy as np

    us = np.array(micros, dtype=np.float64)  # None -> NaN
    seconds = us / 1e6
    for i in np.flatnonzero(np.abs(us) >= _FLOAT_EXACT_INT):
        seconds[i] = micros[i] / 1_000_000  # type: ignore[operator]
    return seconds


@dataclass(frozen=True)
class SyncRun:
    """One recorded sync run."""

    id: int
    connector: str
    source: str | None
    started_at: datetime
    finished_at: datetime | None
    status: str
    batches: int
    opportunities: int
    changes: int
    cursor: str | None
    error: str | None


_OPP_COLUMNS = (
    "id, name, account, owner_id, pipeline_id, stage_id, amount, currency, close_date, created_at, "
    "modified_at, forecast_category, next_step, next_step_date, last_activity, lead_source, type, "
    "is_closed, is_won, closed_at, probability, attributes"
)


class Store:
    """A cockpit store at one SQLite path. Open with `Store.open(path)`; use as a context manager."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._stages: dict[str, Stage] | None = None

    # -- opening -------------------------------------------------------------------------------

    @staticmethod
    def files_stamp(path: Path | str) -> tuple[int, ...] | None:
        """Sizes and modification times of the store at `path` and its write-ahead log, read without
        opening it: every commit changes them (the log grows, or a checkpoint rewrites the file and
        removes the log) and reads do not. None when there is no store."""
        try:
            db = os.stat(path)
        except FileNotFoundError:
            return None
        try:
            wal = os.stat(f"{path}-wal")
        except FileNotFoundError:
            return (db.st_size, db.st_mtime_ns, 0, 0)
        # an empty log is created anew by each first connection: only one with commits counts
        return (db.st_size, db.st_mtime_ns, wal.st_size, wal.st_mtime_ns if wal.st_size else 0)

    @classmethod
    def open(cls, path: Path | str, *, create: bool = True) -> Store:
        """Open (and migrate) the store at `path`. Foreign, corrupt or newer files raise StoreError."""
        path = Path(path)
        if path.is_dir():
            raise StoreError("Not a store", f"{path} is a directory; expected the store file (cockpit.db)")
        if not path.exists() and not create:
            raise StoreError("No store", f"{path} does not exist; run `cockpit sync` first")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(path, timeout=10.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table'").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(
                "Not a cockpit store",
                f"{path} is not a SQLite database ({exc}); move it away or choose another --data-dir",
            ) from None
        if tables and app_id != APPLICATION_ID:
            conn.close()
            raise StoreError(
                "Not a cockpit store",
                f"{path} is a SQLite database of another program; choose another --data-dir",
            )
        if version > SCHEMA_VERSION:
            conn.close()
            raise StoreError(
                "Store is newer than this cockpit",
                f"{path} has schema version {version}, this cockpit knows up to {SCHEMA_VERSION}; "
                "upgrade the cockpit (pip install -U deal-cockpit)",
            )
        store = cls(conn, path)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            store._migrate(version)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreError("Store cannot be opened", f"{path}: {exc}") from None
        try:
            path.chmod(0o600)
        except OSError:  # a shared store may belong to someone else; permissions are theirs to set
            pass
        return store

    def _migrate(self, version: int) -> None:
        for number in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in _split_sql(MIGRATIONS[number]):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.conn.execute(f"PRAGMA user_version = {number + 1}")
            log.info("store %s migrated to schema %d", self.path, number + 1)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        """`with store.transaction():` — BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""
        return _Transaction(self.conn)

    # -- sync ----------------------------------------------------------------------------------

    def begin_sync(self, connector: str, source: str | None) -> int:
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO sync_run (connector, source, started_at, status) VALUES (?, ?, ?, 'running')",
                (connector, source, datetime.now(timezone.utc).isoformat()),
            )
        return int(cur.lastrowid or 0)

    def apply_batch(self, run_id: int, batch: SyncBatch, *, synced_at: datetime | None = None) -> None:
        """Write one batch in one transaction: all of it, or (on any error) none of it."""
        now = to_us(synced_at or datetime.now(timezone.utc))
        with self.transaction():
            if batch.pipelines:
                self._write_pipelines(batch.pipelines)
            if batch.owners:
                self._write_owners(batch.owners)
            changes = self._write_opportunities(batch, now)
            if batch.deleted_ids:
                self._delete(batch.deleted_ids)
            self.conn.execute(
                "UPDATE sync_run SET batches = batches + 1, opportunities = opportunities + ?, "
                "changes = changes + ?, cursor = coalesce(?, cursor) WHERE id = ?",
                (len(batch.opportunities), changes, batch.cursor, run_id),
            )
        if batch.pipelines:
            self._stages = None

    def finish_sync(self, run_id: int, status: str, error: str | None = None) -> None:
        with self.transaction():
            self.conn.execute(
                "UPDATE sync_run SET finished_at = ?, status = ?, error = ? WHERE id = ?",
                (datetime.now(timezone.utc).isoformat(), status, error, run_id),
            )

    def sync_runs(self, limit: int = 20) -> list[SyncRun]:
        rows = self.conn.execute(
            "SELECT id, connector, source, started_at, finished_at, status, batches, opportunities, changes, "
            "cursor, error FROM sync_run ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            SyncRun(
                r[0], r[1], r[2], datetime.fromisoformat(r[3]), datetime.fromisoformat(r[4]) if r[4] else None,
                *r[5:],
            )
            for r in rows
        ]

    def resume_cursor(self, connector: str, source: str | None) -> str | None:
        """Where the next sync of this connector and source starts: the cursor of its newest run."""
        row = self.conn.execute(
            "SELECT cursor FROM sync_run WHERE connector = ? AND source IS ? AND cursor IS NOT NULL "
            "ORDER BY id DESC LIMIT 1",
            (connector, source),
        ).fetchone()
        return row[0] if row else None

    def _write_pipelines(self, pipelines: Sequence[Pipeline]) -> None:
        was_closed = dict(self.conn.execute("SELECT id, is_closed FROM stage").fetchall())
        for position, pipeline in enumerate(pipelines):
            self.conn.execute(
                "INSERT INTO pipeline (id, name, position) VALUES (?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET name = excluded.name, position = excluded.position",
                (pipeline.id, pipeline.name, position),
            )
            self.conn.executemany(
                "INSERT INTO stage (id, pipeline_id, name, ord, probability, category, is_closed, is_won) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET pipeline_id = excluded.pipeline_id, "
                "name = excluded.name, ord = excluded.ord, probability = excluded.probability, "
                "category = excluded.category, is_closed = excluded.is_closed, is_won = excluded.is_won",
                [
                    (s.id, pipeline.id, s.name, s.order, str(s.probability), s.category.value, s.is_closed, s.is_won)
                    for s in pipeline.stages
                ],
            )
        if any(
            s.id in was_closed and bool(was_closed[s.id]) != s.is_closed for p in pipelines for s in p.stages
        ):  # a stage changed between open and closed: every deal's closed_since may have changed
            self.conn.execute(f"UPDATE opportunity SET {LIFESPAN_COLUMNS}")

    def _write_owners(self, owners: Sequence[Owner]) -> None:
        self.conn.executemany(
            "INSERT INTO owner (id, name, manager_id, team, email) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET name = excluded.name, manager_id = excluded.manager_id, "
            "team = excluded.team, email = excluded.email",
            [(o.id, o.name, o.manager_id, o.team, o.email) for o in owners],
        )

    def _write_opportunities(self, batch: SyncBatch, now: int) -> int:
        if not batch.opportunities:
            return 0
        stages = self.stages()
        unknown = sorted({o.stage_id for o in batch.opportunities} - stages.keys())
        if unknown:
            raise StoreError(
                "Unknown stage", f"the batch refers to stages the store has no pipeline for: {', '.join(unknown[:5])}"
            )
        by_deal: dict[str, list[StageChange]] = {}
        for change in batch.changes:
            by_deal.setdefault(change.opportunity_id, []).append(change)
        unknown_ids = sorted(by_deal.keys() - {o.id for o in batch.opportunities})
        if unknown_ids:
            raise StoreError(
                "History without a deal", f"the batch has history for deals it does not carry: {unknown_ids[:5]}"
            )
        ids = [(o.id,) for o in batch.opportunities]
        self.conn.executemany(
            f"INSERT OR REPLACE INTO opportunity ({_OPP_COLUMNS}, synced_at) VALUES ({', '.join('?' * 23)})",
            [_opp_row(o, now) for o in batch.opportunities],
        )
        history_rows: list[tuple[Any, ...]] = []
        undated: list[str] = []
        for opp in batch.opportunities:
            rows = complete_history(opp, by_deal.get(opp.id, []))
            if not rows:
                undated.append(opp.id)
                continue
            history_rows.extend(_history_rows(rows))
        replaced = [i for i in ids if i[0] not in set(undated)] if undated else ids
        self.conn.executemany("DELETE FROM stage_change WHERE opportunity_id = ?", replaced)
        if undated:
            # A deal without any date is known from the moment it was first synced: keep that row.
            first_seen = [
                (i, 0, now, next(o.stage_id for o in batch.opportunities if o.id == i), now)
                for i in undated
            ]
            self.conn.executemany(
                "INSERT OR IGNORE INTO stage_change (opportunity_id, seq, changed_at, stage_id, amount, close_date, "
                "forecast_category, stage_entered_at, stage_changes, pushes) "
                "SELECT ?, ?, ?, ?, o.amount, o.close_date, o.forecast_category, ?, 0, 0 FROM opportunity o "
                "WHERE o.id = ?1",
                first_seen,
            )
        self.conn.executemany(
            "INSERT INTO stage_change (opportunity_id, seq, changed_at, stage_id, amount, close_date, "
            "forecast_category, stage_entered_at, stage_changes, pushes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            history_rows,
        )
        self.conn.execute(
            f"UPDATE opportunity SET {LIFESPAN_COLUMNS} WHERE id IN (SELECT value FROM json_each(?))",
            (json.dumps([o.id for o in batch.opportunities]),),
        )
        self.conn.executemany("DELETE FROM activity WHERE opportunity_id = ?", ids)
        if batch.activities:
            self.conn.executemany(
                "INSERT INTO activity (opportunity_id, day, kind) VALUES (?, ?, ?)",
                [(a.opportunity_id, a.on.isoformat(), a.kind) for a in batch.activities],
            )
        return len(history_rows)

    def _delete(self, ids: Sequence[str]) -> None:
        rows = [(i,) for i in ids]
        for table, column in (("stage_change", "opportunity_id"), ("activity", "opportunity_id"),
                              ("score", "opportunity_id"), ("opportunity", "id")):
            self.conn.executemany(f"DELETE FROM {table} WHERE {column} = ?", rows)

    # -- reading -------------------------------------------------------------------------------

    def is_empty(self) -> bool:
        return self.conn.execute("SELECT NOT EXISTS (SELECT 1 FROM opportunity)").fetchone()[0] == 1

    def counts(self) -> dict[str, int]:
        out = {}
        for table in ("pipeline", "stage", "owner", "opportunity", "stage_change", "activity", "score", "submission"):
            out[table] = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return out

    def pipelines(self) -> list[Pipeline]:
        stages: dict[str, list[Stage]] = {}
        for row in self.conn.execute(
            "SELECT id, pipeline_id, name, ord, probability, category, is_closed, is_won FROM stage ORDER BY ord, id"
        ):
            stages.setdefault(row[1], []).append(
                Stage(
                    id=row[0], name=row[2], order=row[3], probability=Decimal(row[4]),
                    category=ForecastCategory(row[5]), is_closed=bool(row[6]), is_won=bool(row[7]),
                )
            )
        return [
            Pipeline(id=pid, name=name, stages=tuple(stages.get(pid, ())))
            for pid, name in self.conn.execute("SELECT id, name FROM pipeline ORDER BY position, id")
            if stages.get(pid)
        ]

    def stages(self) -> dict[str, Stage]:
        if self._stages is None:
            self._stages = {s.id: s for p in self.pipelines() for s in p.stages}
        return self._stages

    def owners(self) -> list[Owner]:
        return [
            Owner(id=r[0], name=r[1], manager_id=r[2], team=r[3], email=r[4])
            for r in self.conn.execute("SELECT id, name, manager_id, team, email FROM owner ORDER BY name, id")
        ]

    def latest_change_day(self) -> date | None:
        """The day of the newest event in the store (the data's "today")."""
        row = self.conn.execute("SELECT max(changed_at) FROM stage_change").fetchone()
        return from_us(row[0]).date() if row and row[0] is not None else None

    def snapshot(
        self,
        as_of: date,
        *,
        open_only: bool = True,
        close_from: date | None = None,
        close_before: date | None = None,
        owner_ids: Iterable[str] | None = None,
        pipeline_id: str | None = None,
        stage_id: str | None = None,
        ids: Iterable[str] | None = None,
        undated: bool = False,
        closed_from: date | None = None,
    ) -> list[DealSnapshot]:
        """Deals as they stood at the end of `as_of`, reconstructed from history in one query.

        `close_from`/`close_before` filter on the close date as it stood then (the quarter's
        window; `undated` keeps deals without any close date); open_only drops deals that were
        closed by then.
        """
        cut = to_us(end_of_day(as_of))
        where = ["o.first_at < :cut"]  # the deal existed by then (its first history row)
        params: dict[str, Any] = {"cut": cut}
        if open_only and closed_from is not None:
            where.append("(s.is_closed = 0 OR h.stage_entered_at >= :closed_from)")
            params["closed_from"] = to_us(datetime.combine(closed_from, datetime.min.time(), tzinfo=timezone.utc))
            params["settled"] = min(cut, params["closed_from"])
        elif open_only:
            where.append("s.is_closed = 0")
            params["settled"] = cut
        if open_only:
            # A deal that entered its final closed stage before then was closed then (and, with
            # closed_from, closed too early to count): skip it before looking up its history.
            where.append("(o.closed_since IS NULL OR o.closed_since >= :settled)")
        window = []
        if close_from is not None:
            window.append("h.close_date >= :close_from")
            params["close_from"] = close_from.isoformat()
        if close_before is not None:
            window.append("h.close_date < :close_before")
            params["close_before"] = close_before.isoformat()
        if window:
            clause = " AND ".join(window)
            if undated:
                clause = f"(({clause}) OR h.close_date IS NULL)"
            if closed_from is not None:
                clause = f"({clause} OR s.is_closed = 1)"
            where.append(clause)
        if pipeline_id is not None:
            where.append("o.pipeline_id = :pipeline")
            params["pipeline"] = pipeline_id
        if stage_id is not None:
            where.append("h.stage_id = :stage")
            params["stage"] = stage_id
        if ids is not None:
            where.append("o.id IN (SELECT value FROM json_each(:ids))")
            params["ids"] = json.dumps(list(ids))
        if owner_ids is not None:
            where.append(_owner_clause(owner_ids, params))
        # CROSS JOIN keeps the opportunities as the outer loop: left to itself SQLite's planner scans
        # every history row and runs the per-deal subquery for each (1.3-2.1 s at 100,000 deals with
        # 1 M history rows, 0.3 s this way). The subquery seeks the (opportunity_id, changed_at)
        # index to the deal's last row before the cut (rows are numbered in time order, so it is the
        # highest seq among them); the first_at/closed_since filters above run before it.
        sql = f"""
            SELECT {', '.join('o.' + c.strip() for c in _OPP_COLUMNS.split(','))},
                   h.stage_id, h.amount, h.close_date, h.forecast_category, h.stage_entered_at,
                   h.stage_changes, h.pushes, s.is_closed, s.is_won
            FROM opportunity o
            CROSS JOIN stage_change h ON h.opportunity_id = o.id AND h.seq = (
                SELECT h2.seq FROM stage_change h2
                WHERE h2.opportunity_id = o.id AND h2.changed_at < :cut
                ORDER BY h2.changed_at DESC, h2.seq DESC LIMIT 1)
            JOIN stage s ON s.id = h.stage_id
            WHERE {' AND '.join(where) if where else '1'}
            ORDER BY o.id
        """
        out = []
        attributes: dict[str, dict[str, Any]] = {}  # deals share a few attribute sets: parse each once
        with gc_paused():  # thousands of new objects and no cycles among them
            for row in self.conn.execute(sql, params):
                stage_id, amount, close, cat, entered, changes, pushes, closed, won = row[22:]
                values = list(row[:22])
                values[5], values[6], values[8], values[11] = stage_id, amount, close, cat
                values[17], values[18], values[19] = closed, won, entered if closed else None
                deal = _row_opportunity(values, attributes)
                out.append(
                    _build(DealSnapshot, {
                        "as_of": as_of, "deal": deal, "stage_entered_at": from_us(entered),
                        "stage_changes": changes, "close_date_pushes": pushes,
                    })
                )
        return out

    def first_record(self) -> datetime | None:
        """When the CRM's first deal was created: the earliest first history row (None: no deals)."""
        (first,) = self.conn.execute("SELECT min(first_at) FROM opportunity").fetchone()
        return from_us(first) if first is not None else None

    def changed_between(self, start: date, end: date, *, owner_ids: Iterable[str] | None = None) -> set[str]:
        """Ids of the deals whose snapshot may differ between `start` and `end`: those with a history
        row after `start` ended and before `end` ended (a deal created in between has all its rows
        there). Every other deal stood on `start` as it stands on `end`, since a snapshot's changing
        fields all come from its last history row (see `snapshot`)."""
        params: dict[str, Any] = {"start": to_us(end_of_day(start)), "end": to_us(end_of_day(end))}
        where = "" if owner_ids is None else "AND " + _owner_clause(owner_ids, params)
        # One seek per deal in the (opportunity_id, changed_at) index: no index on the time alone.
        rows = self.conn.execute(
            f"""
            SELECT o.id FROM opportunity o
            WHERE EXISTS (SELECT 1 FROM stage_change h WHERE h.opportunity_id = o.id
                          AND h.changed_at >= :start AND h.changed_at < :end) {where}
            """,
            params,
        )
        return {row[0] for row in rows}

    def closed_deal_facts(self) -> list[tuple[str, bool, datetime | None, int]]:
        """(id, won, closed_at, history rows) of every closed deal: what the win model's fingerprint hashes."""
        return [
            (r[0], bool(r[1]), from_us(r[2]) if r[2] is not None else None, r[3])
            for r in self.conn.execute(
                "SELECT o.id, o.is_won, o.closed_at, (SELECT count(*) FROM stage_change h WHERE h.opportunity_id = o.id) "
                "FROM opportunity o WHERE o.is_closed = 1"
            )
        ]

    def won_deal_outcomes(self) -> list[tuple[Any, ...]]:
        """Per won deal with a history (all that run-rates and actuals need): (id, owner, pipeline,
        created µs, won µs, booked day, amount, currency)."""
        return self.conn.execute(
            """
            SELECT o.id, o.owner_id, o.pipeline_id, first.changed_at, last.stage_entered_at,
                   coalesce(o.close_date, date(last.stage_entered_at / 1000000, 'unixepoch')),
                   o.amount, o.currency
            FROM opportunity o
            CROSS JOIN stage_change first ON first.opportunity_id = o.id AND first.seq = 0
            CROSS JOIN stage_change last ON last.opportunity_id = o.id AND last.seq = (
                SELECT max(seq) FROM stage_change WHERE opportunity_id = o.id)
            WHERE o.is_won = 1
            """
        ).fetchall()

    def stage_spells(self, as_of: date) -> dict[str, list[float]]:
        """Days spent in each stage, for every stay that ended by the end of `as_of` (one query)."""
        spells: dict[str, list[float]] = {}
        for stage_id, micros in self.conn.execute(
            """
            SELECT prev_stage, changed_at - prev_entered FROM (
                SELECT stage_id, changed_at,
                       lag(stage_id) OVER w AS prev_stage, lag(stage_entered_at) OVER w AS prev_entered
                FROM stage_change WINDOW w AS (PARTITION BY opportunity_id ORDER BY seq)
            ) WHERE prev_stage IS NOT NULL AND prev_stage != stage_id AND changed_at < ?
            """,
            (to_us(end_of_day(as_of)),),
        ):
            spells.setdefault(stage_id, []).append(micros / 86_400_000_000)
        return spells

    def opportunity(self, opportunity_id: str) -> Opportunity | None:
        row = self.conn.execute(f"SELECT {_OPP_COLUMNS} FROM opportunity WHERE id = ?", (opportunity_id,)).fetchone()
        return _row_opportunity(row) if row else None

    def histories(
        self, *, closed: bool | None = None, ids: Iterable[str] | None = None, chunk: int = 5000
    ) -> Iterator[DealHistory]:
        """Deals with their complete history and activity dates, streamed in id order.

        `closed=True`: only deals closed now (training material); False: only open ones.
        """
        where = _closed_filter(closed)
        wanted = sorted(set(ids)) if ids is not None else None
        last = ""
        while True:
            if wanted is not None:
                page, wanted = wanted[:chunk], wanted[chunk:]
                if not page:
                    return
                selector = "opportunity_id IN (SELECT value FROM json_each(?))"
                args: tuple[Any, ...] = (json.dumps(page),)
                rows = self.conn.execute(
                    f"SELECT {_OPP_COLUMNS} FROM opportunity o WHERE {where} AND "
                    f"{selector.replace('opportunity_id', 'id')} ORDER BY id",
                    args,
                ).fetchall()
            else:
                rows = self.conn.execute(
                    f"SELECT {_OPP_COLUMNS} FROM opportunity o WHERE {where} AND id > ? ORDER BY id LIMIT ?",
                    (last, chunk),
                ).fetchall()
                if not rows:
                    return
                last = rows[-1][0]
                selector = "opportunity_id BETWEEN ? AND ?"
                args = (rows[0][0], last)
            deals = [_row_opportunity(r) for r in rows]
            changes: dict[str, list[StageChange]] = {}
            for r in self.conn.execute(
                "SELECT opportunity_id, changed_at, stage_id, amount, close_date, forecast_category "
                f"FROM stage_change WHERE {selector} ORDER BY opportunity_id, seq",
                args,
            ):
                changes.setdefault(r[0], []).append(
                    _build(StageChange, {
                        "opportunity_id": r[0], "changed_at": from_us(r[1]), "stage_id": r[2], "amount": Decimal(r[3]),
                        "close_date": _date(r[4]), "forecast_category": ForecastCategory(r[5]) if r[5] else None,
                    })
                )
            activities: dict[str, list[date]] = {}
            for r in self.conn.execute(
                f"SELECT opportunity_id, day FROM activity WHERE {selector} ORDER BY opportunity_id, day", args
            ):
                activities.setdefault(r[0], []).append(date.fromisoformat(r[1]))
            for deal in deals:
                yield _build(DealHistory, {
                    "deal": deal,
                    "changes": tuple(changes.get(deal.id, ())),
                    "activities": tuple(activities.get(deal.id, ())),
                })
            if wanted is None and len(rows) < chunk:
                return

    def history_columns(self, *, closed: bool | None = None, chunk: int = 256) -> HistoryColumns:
        """What `histories(closed=...)` reads (the same deals, rows and days, in the same order), as
        columns: `HistoryColumns.of` of those histories gives equal columns. No model object is
        built, per deal or per row: scoring 100,000 open deals would otherwise pay for over half a
        million of them.

        One read transaction (the queries see one state of the store). Deals stream in chunks of
        `chunk`; each chunk's history rows and activity days come in one query each, keyed by the
        deal's place in the chunk, which stays below 257 (Python's cached small ints) by default.
        Only one chunk's rows are held as tuples. Dates become ordinals in SQL (`julianday` is
        exact for every ISO date), times become seconds in `_seconds`. Deals with the same
        attributes text share one attribute set.
        """
        import numpy as np

        from cockpit.models.columns import HistoryColumns, attribute_codes, category_codes, floats

        deal_sql = (
            "SELECT id, owner_id, created_at, is_closed, closed_at, is_won, lead_source, type, currency, "
            f"attributes, stage_id, amount, {_ORDINAL.format('close_date')}, forecast_category "
            f"FROM opportunity o WHERE {_closed_filter(closed)} ORDER BY id"
        )
        change_sql = (
            f"SELECT j.key, h.changed_at, h.stage_id, h.amount, {_ORDINAL.format('h.close_date')}, "
            "h.forecast_category FROM json_each(?) j CROSS JOIN stage_change h ON h.opportunity_id = j.value "
            "ORDER BY j.key, h.seq"
        )
        activity_sql = (
            f"SELECT j.key, CAST({_ORDINAL.format('a.day')} AS INTEGER) "
            "FROM json_each(?) j CROSS JOIN activity a ON a.opportunity_id = j.value ORDER BY j.key, a.day"
        )
        lists: dict[str, list[Any]] = {
            name: [] for name in ("ids", "owners", "source", "type", "currency", "attributes", "stage", "change_stage")
        }
        arrays: dict[str, list[np.ndarray]] = {  # one array per chunk, each list starting with an empty one
            name: [np.empty(0, dtype)] for name, dtype in (
                ("created", np.float64), ("closed", bool), ("closed_at", np.float64), ("won", bool),
                ("amount", np.float64), ("close", np.float64), ("category", np.int64),
                ("change_counts", np.int64), ("change_at", np.float64), ("change_amount", np.float64),
                ("change_close", np.float64), ("change_category", np.int64),
                ("activity_counts", np.int64), ("activity_day", np.int64),
            )
        }
        parsed = _ParsedAttributes()
        began = not self.conn.in_transaction
        if began:
            self.conn.execute("BEGIN")
        try:
            deals = self.conn.execute(deal_sql)
            while rows := deals.fetchmany(chunk):
                (ids, owners, created, is_closed, closed_at, won, source, kind, currency, attributes, stage, amount,
                 close, category) = zip(*rows)
                selection = (json.dumps(ids),)
                keys, at, change_stage, change_amount, change_close, change_category = (
                    list(zip(*self.conn.execute(change_sql, selection).fetchall())) or [()] * 6
                )
                activity_keys, days = list(zip(*self.conn.execute(activity_sql, selection).fetchall())) or [(), ()]
                for name, values in (
                    ("ids", ids), ("owners", owners), ("source", source), ("type", kind), ("currency", currency),
                    ("attributes", map(parsed.__getitem__, attributes)), ("stage", stage),
                    ("change_stage", change_stage),
                ):
                    lists[name].extend(values)
                for name, array in (
                    ("created", _seconds(created)), ("closed", np.array(is_closed, dtype=bool)),
                    ("closed_at", _seconds(closed_at)), ("won", np.array(won, dtype=bool)),
                    ("amount", floats(amount)), ("close", np.array(close, dtype=np.float64)),
                    ("category", category_codes(category)),
                    ("change_counts", np.bincount(np.array(keys, dtype=np.intp), minlength=len(ids))),
                    ("change_at", _seconds(at)), ("change_amount", floats(change_amount)),
                    ("change_close", np.array(change_close, dtype=np.float64)),
                    ("change_category", category_codes(change_category)),
                    ("activity_counts", np.bincount(np.array(activity_keys, dtype=np.intp), minlength=len(ids))),
                    ("activity_day", np.array(days, dtype=np.int64)),
                ):
                    arrays[name].append(array)
        finally:
            if began:
                self.conn.execute("COMMIT")
        column = {name: np.concatenate(parts) for name, parts in arrays.items()}
        return HistoryColumns(
            deal_ids=lists["ids"],
            owner_ids=lists["owners"],
            created_at=column["created"],
            is_closed=column["closed"],
            closed_at=np.where(column["closed"], column["closed_at"], np.nan),
            is_won=column["won"],
            lead_source=lists["source"],
            type=lists["type"],
            currency=lists["currency"],
            **attribute_codes(lists["attributes"]),  # the dicts are shared: one set per distinct text
            stage_id=lists["stage"],
            amount=column["amount"],
            close_date=column["close"],
            category=column["category"],
            change_counts=column["change_counts"],
            change_at=column["change_at"],
            change_stage=lists["change_stage"],
            change_amount=column["change_amount"],
            change_close=column["change_close"],
            change_category=column["change_category"],
            activity_counts=column["activity_counts"],
            activity_day=column["activity_day"],
        )

    # -- scores and model runs -----------------------------------------------------------------

    def write_scores(self, scores: Iterable[DealScore], *, replace_all: bool = True) -> int:
        """Store scores (by default replacing every stored score) in one transaction."""
        rows = [
            (
                s.opportunity_id, s.as_of.isoformat(), s.p_won, s.p_in_quarter,
                json.dumps([r.model_dump() for r in s.reasons], ensure_ascii=False), s.model_version,
            )
            for s in scores
        ]
        return self._write_score_rows(rows, replace_all)

    def write_score_columns(self, scores: ScoreColumns, *, replace_all: bool = True) -> int:
        """`write_scores` of a scoring run's columns (`ScoringModel.score_columns`): the same rows,
        without an object per score or per reason."""
        rows = list(
            zip(
                scores.deal_ids, repeat(scores.as_of.isoformat()), scores.p_won.tolist(),
                scores.p_in_quarter.tolist(), scores.reasons.json(), repeat(scores.model_version),
                strict=False,  # `repeat` is endless
            )
        )
        return self._write_score_rows(rows, replace_all)

    def _write_score_rows(self, rows: list[tuple[Any, ...]], replace_all: bool) -> int:
        with self.transaction():
            if replace_all:
                self.conn.execute("DELETE FROM score")
            self.conn.executemany("INSERT OR REPLACE INTO score VALUES (?, ?, ?, ?, ?, ?)", rows)
        return len(rows)

    def scores(self, ids: Iterable[str] | None = None) -> dict[str, DealScore]:
        """Stored scores, all or of these deals (only the wanted rows are decoded)."""
        sql = "SELECT opportunity_id, as_of, p_won, p_in_quarter, reasons, model_version FROM score"
        if ids is None:
            rows = self.conn.execute(sql).fetchall()
        else:
            rows = self.conn.execute(
                sql + " WHERE opportunity_id IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),)
            ).fetchall()
        return {
            r[0]: _build(DealScore, {
                "opportunity_id": r[0], "as_of": date.fromisoformat(r[1]), "p_won": r[2], "p_in_quarter": r[3],
                "reasons": tuple(_build(Reason, x) for x in json.loads(r[4])), "model_version": r[5],
            })
            for r in rows
        }

    def probabilities(self, ids: Iterable[str]) -> dict[str, float]:
        """The stored in-quarter probability of these deals (no reasons decoded: the roll-up's need)."""
        rows = self.conn.execute(
            "SELECT opportunity_id, p_in_quarter FROM score WHERE opportunity_id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        )
        return dict(rows.fetchall())

    def record_model_run(self, version: str, chosen: str, report: dict[str, Any]) -> int:
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO model_run (created_at, version, chosen, report) VALUES (?, ?, ?, ?)",
                (datetime.now(timezone.utc).isoformat(), version, chosen, json.dumps(report, ensure_ascii=False)),
            )
        return int(cur.lastrowid or 0)

    def record_backtest(self, scope: str, report: dict[str, Any]) -> int:
        with self.transaction():
            cur = self.conn.execute(
                "INSERT INTO backtest_run (created_at, scope, report) VALUES (?, ?, ?)",
                (datetime.now(timezone.utc).isoformat(), scope, json.dumps(report, ensure_ascii=False)),
            )
        return int(cur.lastrowid or 0)

    def latest_backtest(self, scope: str) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT created_at, report FROM backtest_run WHERE scope = ? ORDER BY id DESC LIMIT 1", (scope,)
        ).fetchone()
        return {"created_at": row[0], "report": json.loads(row[1])} if row else None

    def latest_model_run(self) -> dict[str, Any] | None:
        row = self.conn.execute(
            "SELECT id, created_at, version, chosen, report FROM model_run ORDER BY id DESC LIMIT 1"
        ).fetchone()
        if not row:
            return None
        return {"id": row[0], "created_at": row[1], "version": row[2], "chosen": row[3], "report": json.loads(row[4])}


class _Transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")


def _split_sql(script: str) -> list[str]:
    """Split a migration into statements (triggers keep their BEGIN … END; bodies)."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        text = "\n".join(buf).strip()
        if text.endswith(";") and sqlite3.complete_statement(text):
            out.append(text)
            buf = []
    if "".join(buf).strip():
        out.append("\n".join(buf))
    return out


def _opp_row(o: Opportunity, now: int) -> tuple[Any, ...]:
    return (
        o.id, o.name, o.account, o.owner_id, o.pipeline_id, o.stage_id, str(o.amount), o.currency,
        _iso(o.close_date), to_us(o.created_at) if o.created_at else None,
        to_us(o.modified_at) if o.modified_at else None,
        o.forecast_category.value if o.forecast_category else None, o.next_step, _iso(o.next_step_date),
        _iso(o.last_activity), o.lead_source, o.type, int(o.is_closed), int(o.is_won),
        to_us(o.closed_at) if o.closed_at else None, str(o.probability) if o.probability is not None else None,
        json.dumps(o.attributes, ensure_ascii=False, sort_keys=True), now,
    )


_CATEGORY: dict[str | None, ForecastCategory] = {c.value: c for c in ForecastCategory}


def _closed_filter(closed: bool | None) -> str:
    """SQL condition on `opportunity o`: deals closed now (True), open now (False), or all (None)."""
    if closed is None:
        return "1"
    return "o.is_closed = 1" if closed else "o.is_closed = 0"


class _ParsedAttributes(dict[str, dict[str, Any]]):
    """Attributes text -> its parsed dict, parsed on first use and shared by every later deal."""

    def __missing__(self, text: str) -> dict[str, Any]:
        parsed = self[text] = json.loads(text)
        return parsed


def _attributes(text: str, cache: dict[str, dict[str, Any]] | None) -> dict[str, Any]:
    if text == "{}":
        return {}
    if cache is None:
        return json.loads(text)
    parsed = cache.get(text)
    if parsed is None:
        parsed = cache[text] = json.loads(text)
    return dict(parsed)  # a copy: values are str/int/float/bool, so a shallow one is a full one


def _row_opportunity(r: Sequence[Any], attributes: dict[str, dict[str, Any]] | None = None) -> Opportunity:
    """The Opportunity of a store row; `attributes` caches parsed attribute sets across rows (each
    deal still gets its own dict)."""
    return _build(Opportunity, {
        "id": r[0], "name": r[1], "account": r[2], "owner_id": r[3], "pipeline_id": r[4], "stage_id": r[5],
        "amount": Decimal(r[6]), "currency": r[7], "close_date": _date(r[8]),
        "created_at": from_us(r[9]) if r[9] is not None else None,
        "modified_at": from_us(r[10]) if r[10] is not None else None,
        "forecast_category": _CATEGORY.get(r[11]), "next_step": r[12],
        "next_step_date": _date(r[13]), "last_activity": _date(r[14]), "lead_source": r[15], "type": r[16],
        "is_closed": bool(r[17]), "is_won": bool(r[18]), "closed_at": from_us(r[19]) if r[19] is not None else None,
        "probability": Decimal(r[20]) if r[20] is not None else None,
        "attributes": _attributes(r[21], attributes),
    })


def _history_rows(rows: list[StageChange]) -> list[tuple[Any, ...]]:
    out = []
    entered = to_us(rows[0].changed_at)
    stage_changes = pushes = 0
    prev: StageChange | None = None
    for seq, row in enumerate(rows):
        at = to_us(row.changed_at)
        if prev is not None:
            if row.stage_id != prev.stage_id:
                stage_changes += 1
                entered = at
            if row.close_date and prev.close_date and row.close_date > prev.close_date:
                pushes += 1
        out.append(
            (
                row.opportunity_id, seq, at, row.stage_id, str(row.amount), _iso(row.close_date),
                row.forecast_category.value if row.forecast_category else None, entered, stage_changes, pushes,
            )
        )
        prev = row
    return out
