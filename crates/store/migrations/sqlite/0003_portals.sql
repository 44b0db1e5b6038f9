-- Installed Bitrix24 applications (one row per portal, keyed by member_id) and their settings.
-- Secret columns hold AES-256-GCM ciphertext (base64 of nonce || ciphertext); NULL once deleted.
CREATE TABLE portals (
    member_id         TEXT    NOT NULL PRIMARY KEY,
    domain            TEXT    NOT NULL,
    client_endpoint   TEXT    NOT NULL,
    server_endpoint   TEXT    NOT NULL,
    application_token TEXT,
    access_token      TEXT,
    refresh_token     TEXT,
    expires_at        TEXT,
    -- Bumped on every token rotation: a refresh commits only if nobody rotated in between.
    token_version     INTEGER NOT NULL DEFAULT 0,
    status            TEXT    NOT NULL,
    lang              TEXT,
    installed_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE portal_settings (
    member_id  TEXT NOT NULL PRIMARY KEY REFERENCES portals (member_id) ON DELETE CASCADE,
    -- Everything but the API key, as JSON (PortalSettings).
    settings   TEXT NOT NULL,
    api_key    TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
