-- Token keep-alive and durable web progress (same meaning as migrations/postgres/0005).
-- SQLite cannot add a column with a non-constant default: the new timestamps are nullable and written by the
-- statements that change them (same fixed-width UTC text format as everywhere else).

-- When the OAuth pair was last rotated: idle installations are refreshed before their refresh token ages out.
ALTER TABLE portals ADD COLUMN tokens_rotated_at TEXT;
UPDATE portals SET tokens_rotated_at = updated_at;
-- The OAuth server's error code when it refused the last refresh (NULL when fine); shown to the administrator.
ALTER TABLE portals ADD COLUMN refresh_refused TEXT;

-- The live progress of a run of the application server (JSON), and its heartbeat: a running row whose
-- heartbeat stopped belongs to a process that is gone.
ALTER TABLE runs ADD COLUMN progress TEXT;
ALTER TABLE runs ADD COLUMN updated_at TEXT;
UPDATE runs SET updated_at = COALESCE(finished_at, started_at);
