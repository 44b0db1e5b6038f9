-- Open Lines chat sessions exported as SpeechSense chat talks (same meaning as migrations/sqlite/0009): one row per
-- (portal, session ID), in a table of its own so that a session and a call with the same number never share a row.
-- The state machine is the calls' (`pending` → `uploading` → `uploaded` | `skipped` | `failed`) with a lease and a
-- fence. A long history goes out in `parts` talks; `talk_ids` lists the talks stored so far, in part order, so that
-- a run that stopped between parts resumes at the first part not known to be stored.
-- Idempotent: applied over a ledger that has the table already, it changes nothing.
CREATE TABLE IF NOT EXISTS chat_ledger (
    portal                 TEXT        NOT NULL,
    session_id             BIGINT      NOT NULL,
    activity_id            BIGINT      NOT NULL,
    state                  TEXT        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploading', 'uploaded', 'skipped', 'failed')),
    reason                 TEXT,
    detail                 TEXT,
    talk_ids               TEXT        NOT NULL DEFAULT '',
    parts                  BIGINT      NOT NULL DEFAULT 0,
    attempts               BIGINT      NOT NULL DEFAULT 0,
    reuploaded_after_crash BOOLEAN     NOT NULL DEFAULT false,
    fence                  BIGINT      NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_until            TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (portal, session_id)
);

CREATE INDEX IF NOT EXISTS chat_ledger_by_state ON chat_ledger (portal, state, session_id);

-- Like the calls' ledger, the proof of what was uploaded: rows are never deleted.
DROP TRIGGER IF EXISTS chat_ledger_never_delete ON chat_ledger;
CREATE TRIGGER chat_ledger_never_delete BEFORE DELETE ON chat_ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_never_delete();
