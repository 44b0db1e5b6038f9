-- b24sense ledger, PostgreSQL flavour (same tables and meaning as migrations/sqlite).
-- Unqualified names: the tables live in the connection's search_path schema.

CREATE TABLE ledger (
    portal                 TEXT        NOT NULL,
    call_id                BIGINT      NOT NULL,
    state                  TEXT        NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'uploading', 'uploaded', 'skipped', 'failed')),
    reason                 TEXT,
    detail                 TEXT,
    talk_id                TEXT,
    attempts               BIGINT      NOT NULL DEFAULT 0,
    mono                   BOOLEAN     NOT NULL DEFAULT false,
    reuploaded_after_crash BOOLEAN     NOT NULL DEFAULT false,
    call_json              JSONB,
    fence                  BIGINT      NOT NULL DEFAULT 0,
    lease_owner            TEXT,
    lease_until            TIMESTAMPTZ,
    created_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at             TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (portal, call_id)
);

CREATE INDEX ledger_by_state ON ledger (portal, state, call_id);

-- The ledger is the proof of what was uploaded: rows are never deleted.
CREATE FUNCTION ledger_never_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'b24sense ledger rows are never deleted';
END
$$;

CREATE TRIGGER ledger_never_delete BEFORE DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_never_delete();

CREATE TABLE cursors (
    portal     TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    last_id    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (portal, key)
);

CREATE TABLE runs (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    portal      TEXT        NOT NULL,
    started_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ,
    status      TEXT,
    params      JSONB       NOT NULL,
    summary     JSONB
);

CREATE INDEX runs_by_portal ON runs (portal, id);
