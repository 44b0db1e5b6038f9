-- Open Lines chat sessions exported as SpeechSense chat talks (same meaning as migrations/postgres/0009): one row per
-- (portal, session ID), in a table of its own so that a session and a call with the same number never share a row.
-- The state machine is the calls' (`pending` → `uploading` → `uploaded` | `skipped` | `failed`) with a lease and a
-- fence. A long history goes out in `parts` talks; `talk_ids` lists the talks stored so far, in part order, so that
-- a run that stopped between parts resumes at the first part not known to be stored.
-- Idempotent: applied over a ledger that has the table already, it changes nothing.
CREATE TABLE IF NOT EXISTS chat_ledger (
    portal                 TEXT    NOT NULL,
    session_id             INTEGER NOT NULL,
    activity_id            INTEGER NOT NULL,
    state                  TEXT    NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploading', 'uploaded', 'skipped', 'failed')),
    reason                 TEXT,
    detail                 TEXT,
    talk_ids               TEXT    NOT NULL DEFAULT '',
    parts                  INTEGER NOT NULL DEFAULT 0,
    attempts               INTEGER NOT NULL DEFAULT 0,
    reuploaded_after_crash BOOLEAN NOT NULL DEFAULT 0,
    fence                  INTEGER NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_until            TEXT,
    created_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at             TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (portal, session_id)
);

CREATE INDEX IF NOT EXISTS chat_ledger_by_state ON chat_ledger (portal, state, session_id);

-- Like the calls' ledger, the proof of what was uploaded: rows are never deleted.
CREATE TRIGGER IF NOT EXISTS chat_ledger_never_delete BEFORE DELETE ON chat_ledger
BEGIN
    SELECT RAISE(ABORT, 'b24sense ledger rows are never deleted');
END;
