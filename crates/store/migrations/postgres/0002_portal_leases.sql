-- One replica at a time calls a portal: a lease per portal with a fence, like the ledger rows.
CREATE TABLE portal_leases (
    portal      TEXT        NOT NULL PRIMARY KEY,
    owner       TEXT        NOT NULL,
    fence       BIGINT      NOT NULL,
    lease_until TIMESTAMPTZ NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
