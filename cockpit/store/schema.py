"""The store's schema as numbered forward migrations.

`PRAGMA user_version` holds the schema version. Each migration runs in one transaction; a store
from a newer cockpit (a version above ours) is refused rather than guessed at.
"""

from __future__ import annotations

APPLICATION_ID = 0x44434B50  # "DCKP": marks a SQLite file as a cockpit store

LIFESPAN_COLUMNS = """
    first_at = (SELECT h.changed_at FROM stage_change h WHERE h.opportunity_id = opportunity.id AND h.seq = 0),
    closed_since = (
        SELECT CASE WHEN s.is_closed THEN h.stage_entered_at END
        FROM stage_change h JOIN stage s ON s.id = h.stage_id
        WHERE h.opportunity_id = opportunity.id ORDER BY h.seq DESC LIMIT 1)
"""
"""SET clause of an opportunity's `first_at` (its first history row) and `closed_since` (when it
entered the closed stage its last history row is in; NULL while that stage is open)."""

MIGRATIONS: tuple[str, ...] = (
    # 1: the CRM mirror, sync runs, scores, model runs, submissions and drafts
    """
    CREATE TABLE pipeline (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        position INTEGER NOT NULL
    );
    CREATE TABLE stage (
        id TEXT PRIMARY KEY,
        pipeline_id TEXT NOT NULL REFERENCES pipeline(id),
        name TEXT NOT NULL,
        ord INTEGER NOT NULL,
        probability TEXT NOT NULL,
        category TEXT NOT NULL,
        is_closed INTEGER NOT NULL,
        is_won INTEGER NOT NULL
    );
    CREATE TABLE owner (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        manager_id TEXT,
        team TEXT,
        email TEXT
    );
    CREATE TABLE opportunity (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        account TEXT NOT NULL,
        owner_id TEXT NOT NULL,
        pipeline_id TEXT NOT NULL,
        stage_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        currency TEXT NOT NULL,
        close_date TEXT,
        created_at INTEGER,
        modified_at INTEGER,
        forecast_category TEXT,
        next_step TEXT,
        next_step_date TEXT,
        last_activity TEXT,
        lead_source TEXT,
        type TEXT,
        is_closed INTEGER NOT NULL,
        is_won INTEGER NOT NULL,
        closed_at INTEGER,
        probability TEXT,
        attributes TEXT NOT NULL DEFAULT '{}',
        synced_at INTEGER NOT NULL
    );
    CREATE INDEX opportunity_owner ON opportunity(owner_id);
    CREATE TABLE stage_change (
        opportunity_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        changed_at INTEGER NOT NULL,
        stage_id TEXT NOT NULL,
        amount TEXT NOT NULL,
        close_date TEXT,
        forecast_category TEXT,
        stage_entered_at INTEGER NOT NULL,
        stage_changes INTEGER NOT NULL,
        pushes INTEGER NOT NULL,
        PRIMARY KEY (opportunity_id, seq)
    ) WITHOUT ROWID;
    CREATE INDEX stage_change_time ON stage_change(opportunity_id, changed_at);
    CREATE TABLE activity (
        opportunity_id TEXT NOT NULL,
        day TEXT NOT NULL,
        kind TEXT NOT NULL
    );
    CREATE INDEX activity_opportunity ON activity(opportunity_id, day);
    CREATE TABLE sync_run (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        connector TEXT NOT NULL,
        source TEXT,
        started_at TEXT NOT NULL,
        finished_at TEXT,
        status TEXT NOT NULL,
        batches INTEGER NOT NULL DEFAULT 0,
        opportunities INTEGER NOT NULL DEFAULT 0,
        changes INTEGER NOT NULL DEFAULT 0,
        cursor TEXT,
        error TEXT
    );
    CREATE TABLE score (
        opportunity_id TEXT PRIMARY KEY,
        as_of TEXT NOT NULL,
        p_won REAL NOT NULL,
        p_in_quarter REAL NOT NULL,
        reasons TEXT NOT NULL,
        model_version TEXT NOT NULL
    );
    CREATE TABLE model_run (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        version TEXT NOT NULL,
        chosen TEXT NOT NULL,
        report TEXT NOT NULL
    );
    CREATE TABLE submission (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        quarter TEXT NOT NULL,
        scope TEXT NOT NULL,
        author TEXT NOT NULL,
        created_at TEXT NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX submission_quarter ON submission(quarter, scope);
    CREATE TRIGGER submission_no_update BEFORE UPDATE ON submission
        BEGIN SELECT RAISE(ABORT, 'submissions are append-only'); END;
    CREATE TRIGGER submission_no_delete BEFORE DELETE ON submission
        BEGIN SELECT RAISE(ABORT, 'submissions are append-only'); END;
    CREATE TABLE draft (
        quarter TEXT NOT NULL,
        scope TEXT NOT NULL,
        author TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        payload TEXT NOT NULL,
        PRIMARY KEY (quarter, scope, author)
    );
    """,
    # 2: backtest reports (the History screen's accuracy curve)
    """
    CREATE TABLE backtest_run (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at TEXT NOT NULL,
        scope TEXT NOT NULL,
        report TEXT NOT NULL
    );
    """,
    # 3: when each deal's history starts and since when it has sat in its final closed stage, so
    # that an as-of query skips deals that did not exist yet or were long closed (see
    # `Store.snapshot`); kept by every sync batch and stage change (`Store._write_opportunities`,
    # `Store._write_pipelines`)
    f"""
    ALTER TABLE opportunity ADD COLUMN first_at INTEGER;
    ALTER TABLE opportunity ADD COLUMN closed_since INTEGER;
    UPDATE opportunity SET {LIFESPAN_COLUMNS};
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)
