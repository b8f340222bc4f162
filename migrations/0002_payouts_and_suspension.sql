-- syncpay schema, version 2: shop payouts and shop suspension (issue 16).
--
-- A payout is a posting set of its own kind (PAYOUT: the shop's payable
-- account to the system payout account, no trade), a row in payouts (its
-- idempotency key unique across all shops, the amount as the operator
-- asked it: NULL for the whole balance), and a payout entry of the shop.
-- A suspended shop takes no new trades: CreateTrade reads suspended_at
-- under a share lock of the shop row, which SuspendShop's update waits
-- for, so once a suspension returns no trade of the shop is created.

ALTER TABLE shops ADD COLUMN suspended_at bigint CHECK (suspended_at >= 0);

ALTER TABLE posting_sets DROP CONSTRAINT posting_sets_kind_check;
ALTER TABLE posting_sets DROP CONSTRAINT posting_sets_check;
ALTER TABLE posting_sets ADD CONSTRAINT posting_sets_kind_check
    CHECK (kind IN ('TOP_UP', 'SETTLEMENT', 'REFUND', 'PAYOUT'));
ALTER TABLE posting_sets ADD CONSTRAINT posting_sets_check CHECK ((kind IN ('TOP_UP', 'PAYOUT')) = (trade IS NULL));

CREATE TABLE payouts (
    payout_id bigint PRIMARY KEY REFERENCES posting_sets (set_id),
    shop text NOT NULL REFERENCES shops (id),
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    amount minor_units NOT NULL CHECK (amount > 0),
    -- As the operator asked: the exact amount, or NULL for the whole balance.
    requested minor_units,
    reference text NOT NULL,
    idempotency_key text NOT NULL UNIQUE,
    at bigint CHECK (at >= 0) NOT NULL
);
CREATE TRIGGER payouts_immutable BEFORE UPDATE OR DELETE ON payouts
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();

ALTER TABLE payout_entries DROP CONSTRAINT payout_entries_kind_check;
ALTER TABLE payout_entries ADD CONSTRAINT payout_entries_kind_check
    CHECK (kind IN ('SETTLEMENT', 'REFUND', 'PAYOUT'));
ALTER TABLE payout_entries ALTER COLUMN trade DROP NOT NULL;
ALTER TABLE payout_entries ADD COLUMN reference text;
ALTER TABLE payout_entries ADD CONSTRAINT payout_entries_payout_check
    CHECK ((kind = 'PAYOUT') = (trade IS NULL) AND (kind = 'PAYOUT') = (reference IS NOT NULL));
