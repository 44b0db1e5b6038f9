-- Continuous sync waits for recordings Bitrix24 attaches late (mapping.md, "Audio"): such a call stays `pending`
-- with reason 'awaiting_recording' and `retry_at`, the time of its next check. NULL for every other row.
ALTER TABLE ledger ADD COLUMN retry_at TIMESTAMPTZ;

CREATE INDEX ledger_waiting ON ledger (retry_at, portal) WHERE retry_at IS NOT NULL;
