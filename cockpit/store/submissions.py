"""Submissions (append-only) and drafts in SQLite. The payload column holds the model's JSON.

Functions take a `sqlite3.Connection`. A write runs in its own transaction (BEGIN IMMEDIATE …
COMMIT) unless the caller already has one open, in which case it joins it and the caller commits.
Triggers make the submission table append-only: any UPDATE or DELETE aborts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC

from pydantic import ValidationError

from cockpit.models.submission import Draft, Submission

SUBMISSION_DDL = """
CREATE TABLE IF NOT EXISTS submission (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    quarter TEXT NOT NULL,
    scope TEXT NOT NULL,
    author TEXT NOT NULL,
    created_at TEXT NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS submission_quarter ON submission(quarter, scope);
CREATE TRIGGER IF NOT EXISTS submission_no_update BEFORE UPDATE ON submission
    BEGIN SELECT RAISE(ABORT, 'submissions are append-only'); END;
CREATE TRIGGER IF NOT EXISTS submission_no_delete BEFORE DELETE ON submission
    BEGIN SELECT RAISE(ABORT, 'submissions are append-only'); END;
CREATE TABLE IF NOT EXISTS draft (
    quarter TEXT NOT NULL,
    scope TEXT NOT NULL,
    author TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (quarter, scope, author)
);
"""
"""Tables, index and triggers of submissions and drafts (the schema migration includes the same)."""


class SubmissionStoreError(Exception):
    """A submission or draft cannot be stored or read back; `message` says which and why."""

    def __init__(self, title: str, message: str) -> None:
        super().__init__(f"{title}: {message}")
        self.title = title
        self.message = message


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _stamp(value) -> str:
    return value.astimezone(UTC).isoformat()


def append_submission(conn: sqlite3.Connection, submission: Submission) -> int:
    """Store a new submission (one transaction) and return its id. A stored one cannot be stored again."""
    if submission.id is not None:
        raise SubmissionStoreError(
            "Submission already stored",
            f"submission {submission.id} is already in the store; submissions are never edited, "
            "make a new one",
        )
    payload = submission.model_dump_json(exclude={"id"})
    with _transaction(conn):
        cursor = conn.execute(
            "INSERT INTO submission (quarter, scope, author, created_at, payload) VALUES (?, ?, ?, ?, ?)",
            (submission.quarter, submission.scope, submission.author, _stamp(submission.created_at), payload),
        )
    return int(cursor.lastrowid)  # type: ignore[arg-type]


def _submission(row: tuple[int, str]) -> Submission:
    sub_id, payload = row
    try:
        return Submission.model_validate_json(payload).model_copy(update={"id": sub_id})
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SubmissionStoreError(
            "Submission unreadable", f"submission {sub_id} in the store is damaged: {where}: {first['msg']}"
        ) from None


def get_submission(conn: sqlite3.Connection, submission_id: int) -> Submission:
    """The submission with this id; SubmissionStoreError if there is none."""
    row = conn.execute("SELECT id, payload FROM submission WHERE id = ?", (submission_id,)).fetchone()
    if row is None:
        raise SubmissionStoreError("No such submission", f"there is no submission with id {submission_id}")
    return _submission(row)


def list_submissions(
    conn: sqlite3.Connection, quarter: str | None = None, scope: str | None = None
) -> list[Submission]:
    """Submissions, oldest first, optionally for one quarter and/or one scope."""
    sql = "SELECT id, payload FROM submission"
    where, args = [], []
    if quarter is not None:
        where.append("quarter = ?")
        args.append(quarter)
    if scope is not None:
        where.append("scope = ?")
        args.append(scope)
    if where:
        sql += " WHERE " + " AND ".join(where)
    return [_submission(row) for row in conn.execute(sql + " ORDER BY id", args)]


def latest_submissions(
    conn: sqlite3.Connection, quarter: str, owner_ids: Iterable[str]
) -> dict[str, Submission]:
    """For each scope in `owner_ids` that has one, its latest submission for `quarter`."""
    ids = sorted(set(owner_ids))
    out: dict[str, Submission] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        marks = ", ".join("?" * len(chunk))
        rows = conn.execute(
            f"SELECT s.id, s.payload FROM submission s WHERE s.quarter = ? AND s.scope IN ({marks}) "
            "AND s.id = (SELECT max(t.id) FROM submission t "
            "WHERE t.quarter = s.quarter AND t.scope = s.scope)",
            [quarter, *chunk],
        )
        for row in rows:
            sub = _submission(row)
            out[sub.scope] = sub
    return out


def save_draft(conn: sqlite3.Connection, draft: Draft) -> None:
    """Store a draft, replacing the author's previous draft for the same quarter and scope."""
    with _transaction(conn):
        conn.execute(
            "INSERT INTO draft (quarter, scope, author, updated_at, payload) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT (quarter, scope, author) DO UPDATE SET updated_at = excluded.updated_at, "
            "payload = excluded.payload",
            (draft.quarter, draft.scope, draft.author, _stamp(draft.updated_at), draft.model_dump_json()),
        )


def load_draft(conn: sqlite3.Connection, quarter: str, scope: str, author: str) -> Draft | None:
    """The author's draft for the quarter and scope, or None."""
    row = conn.execute(
        "SELECT payload FROM draft WHERE quarter = ? AND scope = ? AND author = ?", (quarter, scope, author)
    ).fetchone()
    if row is None:
        return None
    try:
        return Draft.model_validate_json(row[0])
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise SubmissionStoreError(
            "Draft unreadable",
            f"the draft of {author} for {quarter} / {scope} is damaged ({where}: {first['msg']}); "
            "delete it to start over",
        ) from None


def delete_draft(conn: sqlite3.Connection, quarter: str, scope: str, author: str) -> bool:
    """Remove the author's draft (after submitting it, or to start over). True if there was one."""
    with _transaction(conn):
        cursor = conn.execute(
            "DELETE FROM draft WHERE quarter = ? AND scope = ? AND author = ?", (quarter, scope, author)
        )
    return cursor.rowcount > 0
