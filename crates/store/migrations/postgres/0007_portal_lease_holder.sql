-- Who holds a portal's lease: the holding process's host, boot, PID namespace, PID and start time, as the engine
-- writes them. A run on the same machine that finds that process gone takes the portal over at once instead of
-- waiting for the lease to expire. NULL: unknown (older versions, other systems) — such a lease is waited for.
ALTER TABLE portal_leases ADD COLUMN holder TEXT;
