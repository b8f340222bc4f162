-- syncpay schema, version 3: carrier remittances (issue 16).
--
-- A remittance is a posting set of its own kind (REMITTANCE: the system
-- remittance account to the carrier's remitted account, no trade) and a
-- row in remittances naming the carrier, the shop and the closed UTC
-- month (yyyy * 100 + mm) of the carrier-billed sales it pays for, its
-- idempotency key unique across the operator. What is owed comes from
-- payout_entries; a remittance checks it under an advisory transaction
-- lock on its (carrier, shop, month, currency), see docs/POSTGRES.md.

ALTER TABLE posting_sets DROP CONSTRAINT posting_sets_kind_check;
ALTER TABLE posting_sets DROP CONSTRAINT posting_sets_check;
ALTER TABLE posting_sets ADD CONSTRAINT posting_sets_kind_check
    CHECK (kind IN ('TOP_UP', 'SETTLEMENT', 'REFUND', 'PAYOUT', 'REMITTANCE'));
ALTER TABLE posting_sets ADD CONSTRAINT posting_sets_check
    CHECK ((kind IN ('TOP_UP', 'PAYOUT', 'REMITTANCE')) = (trade IS NULL));

CREATE TABLE remittances (
    remittance_id bigint PRIMARY KEY REFERENCES posting_sets (set_id),
    carrier text NOT NULL REFERENCES carriers (id),
    shop text NOT NULL REFERENCES shops (id),
    month integer NOT NULL CHECK (month >= 197001 AND month <= 999912 AND month % 100 BETWEEN 1 AND 12),
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    amount minor_units NOT NULL CHECK (amount > 0),
    reference text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    at bigint CHECK (at >= 0) NOT NULL
);
CREATE INDEX remittances_slot ON remittances (carrier, month, shop, currency);
CREATE TRIGGER remittances_immutable BEFORE UPDATE OR DELETE ON remittances
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();

-- The statement reads a carrier's entries of a month across shops.
CREATE INDEX payout_entries_carrier ON payout_entries (carrier, at) WHERE carrier IS NOT NULL;
