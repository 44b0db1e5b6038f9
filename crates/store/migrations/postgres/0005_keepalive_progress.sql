-- Token keep-alive and durable web progress (same meaning as migrations/sqlite/0005).

-- When the OAuth pair was last rotated: idle installations are refreshed before their refresh token ages out.
ALTER TABLE portals ADD COLUMN tokens_rotated_at TIMESTAMPTZ;
UPDATE portals SET tokens_rotated_at = updated_at;
-- The OAuth server's error code when it refused the last refresh (NULL when fine); shown to the administrator.
ALTER TABLE portals ADD COLUMN refresh_refused TEXT;

-- The live progress of a run of the application server (JSON), and its heartbeat: a running row whose
-- heartbeat stopped belongs to a process that is gone.
ALTER TABLE runs ADD COLUMN progress JSONB;
ALTER TABLE runs ADD COLUMN updated_at TIMESTAMPTZ;
UPDATE runs SET updated_at = COALESCE(finished_at, started_at);
