-- One replica at a time calls a portal: a lease per portal with a fence, like the ledger rows.
CREATE TABLE portal_leases (
    portal      TEXT    NOT NULL PRIMARY KEY,
    owner       TEXT    NOT NULL,
    fence       INTEGER NOT NULL,
    lease_until TEXT    NOT NULL,
    updated_at  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
