-- Per portal, whether it counts recording downloads from its own host (`/rest/download.json`) against its request
-- bucket (same meaning as migrations/postgres/0006). Bitrix24 does not document it: a run learns it from the
-- portal's first rate-limit refusal while downloads ran uncounted, and later runs start counting. No row: not
-- known to count them.
CREATE TABLE portal_download_accounting (
    portal            TEXT    NOT NULL PRIMARY KEY,
    downloads_counted INTEGER NOT NULL,
    updated_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
