-- The installation's generation (same meaning as migrations/postgres/0008): bumped by every install, reinstall
-- and uninstall. Settings-page sessions name the generation they were issued in and are refused once it moved
-- on, so a session never outlives the installation that opened it.
ALTER TABLE portals ADD COLUMN generation INTEGER NOT NULL DEFAULT 1;
