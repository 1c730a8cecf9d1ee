"""The SQLite store's schema: its tables, its version, and how an older file is migrated."""

from __future__ import annotations

import sqlite3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: list cursors stay valid
    id TEXT NOT NULL UNIQUE,
    command TEXT,
    args TEXT NOT NULL,
    spec TEXT NOT NULL,
    status TEXT NOT NULL,
    returncode INTEGER,
    error TEXT,
    stdout_truncated INTEGER NOT NULL DEFAULT 0,
    stderr_truncated INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    owner TEXT,
    idempotency_key TEXT,
    scope TEXT UNIQUE,  -- Job.idempotency_scope (caller, command, key): idempotency
    cancel INTEGER NOT NULL DEFAULT 0,
    link TEXT,
    callback_url TEXT,
    callback_context TEXT,
    callback TEXT,
    token_id TEXT,
    client TEXT,
    process TEXT  -- the running child's process tag (procgate.process.process_tag)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_command ON jobs (command, seq);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (command, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_finish ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS output (
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,  -- the chunk's number: 1, 2, 3... per job, both streams
    stream INTEGER NOT NULL,  -- 0 stdout, 1 stderr
    off INTEGER NOT NULL,  -- where the data starts in its stream
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS owners (owner TEXT PRIMARY KEY, beat REAL NOT NULL);
CREATE TABLE IF NOT EXISTS launches (  -- job creations of the last day, for rate limits
    command TEXT,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS launches_by_command ON launches (command, at);
"""

#: The callback outbox, made at every open (IF NOT EXISTS): a file from before it gets it
#: with no new schema version. A row is a finished job whose callback is due at ``due``
#: (Unix time); a claim moves ``due`` to the end of its lease.
_OUTBOX = """
CREATE TABLE IF NOT EXISTS callbacks (job_id TEXT PRIMARY KEY, due REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS callbacks_by_due ON callbacks (due);
"""

#: A job with a callback enters the outbox, due at once, in the statement that finishes it
#: (whichever: a finish, a cancel while queued, a sweep's ``lost``), so the finish and the
#: callback are one atomic step, at no cost to jobs without a callback. One statement: its
#: body holds semicolons.
_OUTBOX_TRIGGER = """
CREATE TRIGGER IF NOT EXISTS callbacks_on_finish AFTER UPDATE OF status ON jobs
WHEN NEW.callback_url IS NOT NULL AND OLD.status IN ('queued', 'running')
    AND NEW.status NOT IN ('queued', 'running')
BEGIN
    INSERT OR IGNORE INTO callbacks (job_id, due) VALUES (NEW.id, NEW.finished_at);
END
"""

#: Stored in the database; a file of another schema is refused rather than misread.
SCHEMA_VERSION = 3

#: What brings a file of an older version (the key) up to ``SCHEMA_VERSION``.
_MIGRATIONS = {2: ("ALTER TABLE jobs ADD COLUMN process TEXT",)}


def prepare(db: sqlite3.Connection) -> None:
    """Make a new file's tables, or migrate an older one, in one transaction.

    The file is in WAL mode already (``ConnectionPool`` puts it there as it opens it), so
    readers never block the writer. A file of an unknown version (a newer procgate's) is
    refused with ``sqlite3.DatabaseError`` rather than misread.
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        fresh = db.execute("SELECT 1 FROM sqlite_master WHERE name = 'jobs'").fetchone() is None
        if fresh:
            _run(db, _SCHEMA)
        elif version in _MIGRATIONS:  # an older file: bring it up to date
            for statement in _MIGRATIONS[version]:
                db.execute(statement)
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version}, this procgate needs {SCHEMA_VERSION}: "
                "move the file away to start afresh"
            )
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        _run(db, _OUTBOX)
        db.execute(_OUTBOX_TRIGGER)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


def _run(db: sqlite3.Connection, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)
