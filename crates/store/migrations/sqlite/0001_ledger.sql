-- b24sense ledger, SQLite flavour (same tables and meaning as migrations/postgres).
-- Timestamps are TEXT in one fixed-width UTC format ('YYYY-MM-DDTHH:MM:SS.sssZ') so that text comparison is time order.

CREATE TABLE ledger (
    portal                 TEXT    NOT NULL,
    call_id                INTEGER NOT NULL,
    state                  TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploading', 'uploaded', 'skipped', 'failed')),
    reason                 TEXT,
    detail                 TEXT,
    talk_id                TEXT,
    attempts               INTEGER NOT NULL DEFAULT 0,
    mono                   BOOLEAN NOT NULL DEFAULT 0,
    reuploaded_after_crash BOOLEAN NOT NULL DEFAULT 0,
    call_json              TEXT,
    fence                  INTEGER NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_until            TEXT,
    created_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (portal, call_id)
);

CREATE INDEX ledger_by_state ON ledger (portal, state, call_id);

-- The ledger is the proof of what was uploaded: rows are never deleted.
CREATE TRIGGER ledger_never_delete BEFORE DELETE ON ledger
BEGIN
    SELECT RAISE(ABORT, 'b24sense ledger rows are never deleted');
END;

CREATE TABLE cursors (
    portal     TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    last_id    INTEGER NOT NULL,
    updated_at TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (portal, key)
);

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    portal      TEXT NOT NULL,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    status      TEXT,
    params      TEXT NOT NULL,
    summary     TEXT
);

CREATE INDEX runs_by_portal ON runs (portal, id);
