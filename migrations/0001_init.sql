-- syncpay schema, version 1: every record of the sled store as a table.
--
-- Applied by the migrator in src/store/postgres/migrate.rs inside one
-- transaction (all or nothing), under an advisory lock so that several
-- nodes starting at once apply it once. The invariants the application
-- keeps are also written here as constraints and triggers where the
-- database can hold them, so that no code path, node or operator session
-- can break them: amounts fit in u64, no wallet below zero, postings
-- immutable and balanced per currency, at most one settlement per trade,
-- a final state is final, the fields a handset signs never change,
-- refunds never above the amount, cap use never above the cap.
--
-- docs/POSTGRES.md gives, for each write, the SQL and the locks it relies
-- on. Types: ids of 128 bits are bytea of 16 bytes; instants are Unix
-- milliseconds (bigint); amounts are minor units as numeric(20,0) limited
-- to 0..=2^64-1 (the domain's u64: bigint would stop at 2^63-1); slugs and
-- E.164 numbers are text. Only amounts have a SQL domain: a parameter of a
-- domain type is described to clients as that domain, and the client
-- library's built-in conversions accept only base types, so the other
-- limits are column CHECKs.

CREATE DOMAIN minor_units AS numeric(20, 0)
    CHECK (VALUE >= 0 AND VALUE <= 18446744073709551615);

CREATE FUNCTION syncpay_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% of % is not allowed: % rows are immutable', TG_OP, TG_TABLE_NAME, TG_TABLE_NAME
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

-- Parties ---------------------------------------------------------------

-- Who holds a credential, by SHA-256 of its token.
CREATE TABLE credentials (
    token_hash bytea PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    kind text NOT NULL CHECK (kind IN ('admin', 'shop', 'carrier')),
    party text,
    CHECK ((kind = 'admin') = (party IS NULL))
);

CREATE TABLE shops (
    id text PRIMARY KEY,
    display_name text NOT NULL,
    created_at bigint CHECK (created_at >= 0) NOT NULL,
    -- Registers of the shop that are open (OpenRegister's limit).
    open_registers integer NOT NULL DEFAULT 0 CHECK (open_registers >= 0)
);

-- The shop's event counter, apart from the shop row so that numbering
-- events never waits for a register opening and the reverse. Locked by
-- every transaction that writes an event of the shop (UPDATE ... RETURNING),
-- so events are numbered 1, 2, 3, ... in commit order without gaps.
CREATE TABLE shop_event_heads (
    shop text PRIMARY KEY REFERENCES shops (id),
    last_seq bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0)
);

CREATE TABLE carriers (
    id text PRIMARY KEY,
    display_name text NOT NULL,
    created_at bigint CHECK (created_at >= 0) NOT NULL,
    -- Fee on carrier-billed charges, in basis points.
    fee_bps integer NOT NULL CHECK (fee_bps BETWEEN 0 AND 10000)
);

-- A carrier's IP prefixes; IPv4 as IPv4-mapped IPv6, as the domain's
-- IpKey, so that matching is bit for bit the sled store's. Prefixes of
-- different carriers never overlap: AddPrefixes checks under a
-- transaction-level advisory lock (docs/POSTGRES.md), and the GiST index
-- answers both that check (&&) and the longest-prefix match (>>=).
CREATE TABLE carrier_prefixes (
    prefix cidr PRIMARY KEY CHECK (family(prefix) = 6),
    carrier text NOT NULL REFERENCES carriers (id)
);
CREATE INDEX carrier_prefixes_gist ON carrier_prefixes USING gist (prefix inet_ops);

CREATE TABLE subscribers (
    number text PRIMARY KEY,
    carrier text NOT NULL REFERENCES carriers (id),
    funding text NOT NULL CHECK (funding IN ('wallet', 'carrier_bill')),
    -- Carrier billing only: the bill's currency and monthly cap.
    bill_currency text CHECK (bill_currency ~ '^[A-Z]{3}$'),
    monthly_cap minor_units,
    enrolled_at bigint CHECK (enrolled_at >= 0) NOT NULL,
    CHECK ((funding = 'carrier_bill') = (bill_currency IS NOT NULL AND monthly_cap IS NOT NULL))
);

CREATE TABLE handsets (
    number text PRIMARY KEY REFERENCES subscribers (number),
    public_key bytea NOT NULL CHECK (octet_length(public_key) = 32),
    enrolled_at bigint CHECK (enrolled_at >= 0) NOT NULL
);

CREATE TABLE registers (
    shop text NOT NULL REFERENCES shops (id),
    id bytea CHECK (octet_length(id) = 16) NOT NULL,
    label text NOT NULL,
    open boolean NOT NULL,
    opened_at bigint CHECK (opened_at >= 0) NOT NULL,
    closed_at bigint CHECK (closed_at >= 0),
    -- Trades of the register in PENDING or OFFERED.
    open_trades integer NOT NULL DEFAULT 0 CHECK (open_trades >= 0),
    PRIMARY KEY (shop, id),
    CHECK (open = (closed_at IS NULL))
);

-- Money -----------------------------------------------------------------

-- One row per ledger account; name is AccountName::key(). The balance is
-- credits - debits. Rows are locked in name order by every transaction
-- that posts (SELECT ... ORDER BY name FOR UPDATE), so two postings never
-- deadlock and never lose an update.
CREATE TABLE accounts (
    name text PRIMARY KEY,
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    -- Wallets: credits must always cover debits.
    no_overdraft boolean NOT NULL,
    debits minor_units NOT NULL DEFAULT 0,
    credits minor_units NOT NULL DEFAULT 0,
    CONSTRAINT accounts_no_overdraft CHECK (NOT no_overdraft OR credits >= debits)
);

CREATE SEQUENCE posting_set_ids AS bigint;
CREATE SEQUENCE posting_ids AS bigint;

-- A posting set: one money movement, its legs in postings. At most one
-- settlement per trade, whatever any code path does.
CREATE TABLE posting_sets (
    set_id bigint PRIMARY KEY,
    kind text NOT NULL CHECK (kind IN ('TOP_UP', 'SETTLEMENT', 'REFUND')),
    trade bytea CHECK (octet_length(trade) = 16),
    at bigint CHECK (at >= 0) NOT NULL,
    CHECK ((kind = 'TOP_UP') = (trade IS NULL))
);
CREATE UNIQUE INDEX posting_sets_one_settlement ON posting_sets (trade) WHERE kind = 'SETTLEMENT';
CREATE INDEX posting_sets_trade ON posting_sets (trade) WHERE trade IS NOT NULL;

-- One leg; immutable and append-only.
CREATE TABLE postings (
    posting_id bigint PRIMARY KEY,
    set_id bigint NOT NULL REFERENCES posting_sets (set_id),
    account text NOT NULL REFERENCES accounts (name),
    side text NOT NULL CHECK (side IN ('D', 'C')),
    amount minor_units NOT NULL CHECK (amount > 0),
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL
);
CREATE INDEX postings_set ON postings (set_id);
CREATE INDEX postings_account ON postings (account);

CREATE TRIGGER postings_immutable BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON postings
    FOR EACH STATEMENT EXECUTE FUNCTION syncpay_refuse_change();
CREATE TRIGGER posting_sets_immutable BEFORE UPDATE OR DELETE ON posting_sets
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();
CREATE TRIGGER posting_sets_no_truncate BEFORE TRUNCATE ON posting_sets
    FOR EACH STATEMENT EXECUTE FUNCTION syncpay_refuse_change();

-- At commit, each posting set has legs, and its debits equal its credits
-- in every currency (the domain's PostingSet is balanced by construction;
-- this holds it for every writer).
CREATE FUNCTION syncpay_check_set_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    legs bigint;
    unbalanced text;
BEGIN
    SELECT count(*) INTO legs FROM postings WHERE set_id = NEW.set_id;
    IF legs = 0 THEN
        RAISE EXCEPTION 'posting set % has no legs', NEW.set_id
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    SELECT currency INTO unbalanced FROM postings WHERE set_id = NEW.set_id
        GROUP BY currency
        HAVING sum(CASE side WHEN 'D' THEN amount ELSE 0 END) <> sum(CASE side WHEN 'C' THEN amount ELSE 0 END)
        LIMIT 1;
    IF unbalanced IS NOT NULL THEN
        RAISE EXCEPTION 'posting set % is not balanced in %', NEW.set_id, unbalanced
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER posting_sets_balanced AFTER INSERT ON posting_sets
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION syncpay_check_set_balanced();

-- Trades ----------------------------------------------------------------

CREATE TABLE trades (
    id bytea CHECK (octet_length(id) = 16) PRIMARY KEY,
    shop text NOT NULL REFERENCES shops (id),
    register bytea CHECK (octet_length(register) = 16) NOT NULL,
    -- The payer's carrier; NULL when the payer was unknown (FAILED at once).
    carrier text REFERENCES carriers (id),
    payer text NOT NULL,
    amount minor_units NOT NULL,
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    description text NOT NULL,
    ttl_ms bigint NOT NULL CHECK (ttl_ms > 0),
    state text NOT NULL CHECK (state IN ('PENDING', 'OFFERED', 'SETTLED', 'DECLINED', 'EXPIRED', 'CANCELLED', 'FAILED')),
    failure text CHECK (failure IN ('INSUFFICIENT_FUNDS', 'BAD_SIGNATURE', 'NO_HANDSET', 'SPENDING_CAP',
                                    'PAYER_UNKNOWN', 'CARRIER_REFUSED_SHOP')),
    binding_code text NOT NULL,
    created_at bigint CHECK (created_at >= 0) NOT NULL,
    expires_at bigint CHECK (expires_at >= 0) NOT NULL,
    finished_at bigint CHECK (finished_at >= 0),
    decision text CHECK (decision IN ('APPROVE', 'DECLINE')),
    -- The receipt of a settled trade (records::Receipt::Countersigned):
    -- the handset's signature over the approval payload (rebuilt from the
    -- trade's fields), the handset key that made it, and the operator's
    -- countersignature with the key named by receipt_key_id.
    receipt_signature bytea CHECK (octet_length(receipt_signature) = 64),
    receipt_handset_key bytea CHECK (octet_length(receipt_handset_key) = 32),
    receipt_key_id bytea CHECK (octet_length(receipt_key_id) = 8),
    receipt_countersignature bytea CHECK (octet_length(receipt_countersignature) = 64),
    -- What the approval payload binds beyond the columns above: the
    -- digest of the screen text as offered (payload version 2; every
    -- trade this backend creates has one).
    screen_digest bytea NOT NULL CHECK (octet_length(screen_digest) = 32),
    idempotency_key text,
    -- The outbox delivery of the offer while it is unacknowledged.
    offer_delivery bigint,
    refunded minor_units NOT NULL DEFAULT 0,
    FOREIGN KEY (shop, register) REFERENCES registers (shop, id),
    CHECK ((state IN ('PENDING', 'OFFERED')) = (finished_at IS NULL)),
    CHECK ((state = 'FAILED') = (failure IS NOT NULL)),
    CHECK (receipt_signature IS NULL OR state = 'SETTLED'),
    CHECK ((receipt_signature IS NULL) = (receipt_handset_key IS NULL)
           AND (receipt_signature IS NULL) = (receipt_key_id IS NULL)
           AND (receipt_signature IS NULL) = (receipt_countersignature IS NULL)),
    CHECK (refunded <= amount),
    CHECK (refunded = 0 OR state = 'SETTLED'),
    CHECK (expires_at > created_at)
);
-- The expiry sweeper's queue: open trades by deadline (the sled store's
-- deadlines tree, derived here from the trade itself).
CREATE INDEX trades_open_by_deadline ON trades (expires_at) WHERE state IN ('PENDING', 'OFFERED');
CREATE INDEX trades_shop ON trades (shop, created_at);

-- A final state is final, and what the handset signs (trade, amount,
-- currency, shop, register, expiry) and whom it was offered to never
-- change once the trade exists.
CREATE FUNCTION syncpay_check_trade_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id <> OLD.id OR NEW.shop <> OLD.shop OR NEW.register <> OLD.register
       OR NEW.amount <> OLD.amount OR NEW.currency <> OLD.currency OR NEW.expires_at <> OLD.expires_at
       OR NEW.payer <> OLD.payer OR NEW.carrier IS DISTINCT FROM OLD.carrier
       OR NEW.description <> OLD.description OR NEW.binding_code <> OLD.binding_code
       OR NEW.created_at <> OLD.created_at OR NEW.screen_digest <> OLD.screen_digest THEN
        RAISE EXCEPTION 'trade %: signed and offered fields never change', encode(OLD.id, 'hex')
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.state NOT IN ('PENDING', 'OFFERED') AND (NEW.state <> OLD.state
       OR NEW.finished_at IS DISTINCT FROM OLD.finished_at OR NEW.decision IS DISTINCT FROM OLD.decision
       OR NEW.failure IS DISTINCT FROM OLD.failure OR NEW.receipt_signature IS DISTINCT FROM OLD.receipt_signature
       OR NEW.receipt_countersignature IS DISTINCT FROM OLD.receipt_countersignature) THEN
        RAISE EXCEPTION 'trade % is % and final', encode(OLD.id, 'hex'), OLD.state
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF NEW.refunded < OLD.refunded THEN
        RAISE EXCEPTION 'trade %: refunds only grow', encode(OLD.id, 'hex')
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER trades_guard BEFORE UPDATE ON trades
    FOR EACH ROW EXECUTE FUNCTION syncpay_check_trade_update();
CREATE TRIGGER trades_no_delete BEFORE DELETE ON trades
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();

-- One durable state change of a trade, numbered per shop (see
-- shop_event_heads). Only what can change after the event is stored; the
-- rest is joined from the trade, as the sled store's compact events.
CREATE TABLE events (
    shop text NOT NULL REFERENCES shops (id),
    seq bigint NOT NULL CHECK (seq >= 1),
    at bigint CHECK (at >= 0) NOT NULL,
    trade bytea CHECK (octet_length(trade) = 16) NOT NULL REFERENCES trades (id),
    kind text NOT NULL CHECK (kind IN ('STATE_CHANGED', 'REFUNDED')),
    -- REFUNDED only: the refund's amount and posting set.
    refund_amount minor_units,
    refund_set bigint REFERENCES posting_sets (set_id),
    state text NOT NULL,
    failure text,
    decision text,
    finished_at bigint CHECK (finished_at >= 0),
    refunded minor_units NOT NULL,
    offer_delivery bigint,
    has_receipt boolean NOT NULL,
    PRIMARY KEY (shop, seq),
    CHECK ((kind = 'REFUNDED') = (refund_amount IS NOT NULL AND refund_set IS NOT NULL))
);
CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION syncpay_refuse_change();

-- Work for carriers: written in the commit that caused it, deleted when
-- the carrier acknowledges it. A node that has the carrier's relay claims
-- a delivery (claimed_by, claimed_until) before sending it, so two nodes
-- do not push the same offer at once; a claim that lapses (the node died,
-- the relay left) lets another node send it.
CREATE SEQUENCE delivery_ids AS bigint;
CREATE TABLE outbox (
    delivery_id bigint PRIMARY KEY,
    carrier text NOT NULL REFERENCES carriers (id),
    kind text NOT NULL CHECK (kind IN ('OFFER', 'WITHDRAW')),
    trade bytea CHECK (octet_length(trade) = 16) NOT NULL REFERENCES trades (id),
    payer text NOT NULL,
    -- WITHDRAW: the state that ended the trade.
    withdraw_state text,
    -- OFFER: what the handset shows, as it was at commit time.
    shop text,
    shop_name text,
    register bytea CHECK (octet_length(register) = 16),
    register_label text,
    amount minor_units,
    currency text CHECK (currency ~ '^[A-Z]{3}$'),
    description text,
    expires_at bigint CHECK (expires_at >= 0),
    binding_code text,
    claimed_by text,
    claimed_until bigint CHECK (claimed_until >= 0),
    CHECK ((kind = 'WITHDRAW') = (withdraw_state IS NOT NULL)),
    CHECK ((kind = 'OFFER') = (shop IS NOT NULL AND shop_name IS NOT NULL AND register IS NOT NULL
        AND register_label IS NOT NULL AND amount IS NOT NULL AND currency IS NOT NULL
        AND description IS NOT NULL AND expires_at IS NOT NULL AND binding_code IS NOT NULL))
);
CREATE INDEX outbox_carrier ON outbox (carrier, delivery_id);

-- Idempotency keys, unique per shop and kind. The request is kept as the
-- shop sent it (a payer number, or a network identity, never who it
-- resolved to) to compare a retry field by field.
CREATE TABLE idempotency_keys (
    shop text NOT NULL REFERENCES shops (id),
    kind text NOT NULL CHECK (kind IN ('CREATE', 'REFUND')),
    key text NOT NULL,
    trade bytea CHECK (octet_length(trade) = 16) NOT NULL,
    -- CREATE: the request.
    register bytea CHECK (octet_length(register) = 16),
    payer_number text,
    identity_ip bytea CHECK (octet_length(identity_ip) = 16),
    identity_port integer CHECK (identity_port BETWEEN 0 AND 65535),
    identity_observed_at bigint CHECK (identity_observed_at >= 0),
    amount minor_units NOT NULL,
    currency text CHECK (currency ~ '^[A-Z]{3}$'),
    description text,
    ttl_ms bigint,
    -- REFUND: the refund's posting set.
    refund_set bigint REFERENCES posting_sets (set_id),
    PRIMARY KEY (shop, kind, key),
    CHECK ((kind = 'REFUND') = (refund_set IS NOT NULL)),
    CHECK (kind = 'REFUND' OR ((payer_number IS NULL) <> (identity_ip IS NULL)))
);

-- Network identity and carrier billing ----------------------------------

-- Lease starts and stops. "Who held addr:port at t" is one backward index
-- scan from (addr, t): the primary key is the sled store's lease key.
CREATE TABLE leases (
    addr bytea NOT NULL CHECK (octet_length(addr) = 16),
    at bigint CHECK (at >= 0) NOT NULL,
    port_lo integer NOT NULL CHECK (port_lo BETWEEN 0 AND 65535),
    is_start boolean NOT NULL,
    port_hi integer NOT NULL CHECK (port_hi BETWEEN port_lo AND 65535),
    carrier text NOT NULL REFERENCES carriers (id),
    -- Starts only.
    subscriber text,
    PRIMARY KEY (addr, at, port_lo, is_start),
    CHECK (is_start = (subscriber IS NOT NULL))
);

-- The carrier accepts the shop.
CREATE TABLE acceptances (
    carrier text NOT NULL REFERENCES carriers (id),
    shop text NOT NULL REFERENCES shops (id),
    PRIMARY KEY (carrier, shop)
);

-- A subscriber's cap use in one month and currency; cap is the cap in
-- force at the last change. Locked (the row) by the settlement or refund
-- that changes it.
CREATE TABLE cap_use (
    carrier text NOT NULL,
    number text NOT NULL,
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    month integer NOT NULL CHECK (month BETWEEN 197001 AND 999912),
    cap minor_units NOT NULL,
    used minor_units NOT NULL,
    PRIMARY KEY (carrier, number, currency, month),
    CONSTRAINT cap_use_within_cap CHECK (used <= cap)
);

-- One charge on a carrier bill, under the month it settled in.
CREATE TABLE bill_lines (
    set_id bigint PRIMARY KEY REFERENCES posting_sets (set_id),
    carrier text NOT NULL,
    number text NOT NULL,
    month integer NOT NULL,
    trade bytea CHECK (octet_length(trade) = 16) NOT NULL UNIQUE,
    shop text NOT NULL,
    shop_name text NOT NULL,
    amount minor_units NOT NULL,
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    fee minor_units NOT NULL,
    fee_bps integer NOT NULL,
    settled_at bigint CHECK (settled_at >= 0) NOT NULL,
    refunded minor_units NOT NULL DEFAULT 0,
    CHECK (refunded <= amount),
    CHECK (fee <= amount)
);
CREATE INDEX bill_lines_month ON bill_lines (carrier, number, month, set_id);

-- What moved on a shop's payable account, for payout reports.
CREATE TABLE payout_entries (
    set_id bigint PRIMARY KEY REFERENCES posting_sets (set_id),
    shop text NOT NULL,
    at bigint CHECK (at >= 0) NOT NULL,
    kind text NOT NULL CHECK (kind IN ('SETTLEMENT', 'REFUND')),
    trade bytea CHECK (octet_length(trade) = 16) NOT NULL,
    carrier text,
    currency text CHECK (currency ~ '^[A-Z]{3}$') NOT NULL,
    -- SETTLEMENT: gross and fee; REFUND: the amount refunded (in gross).
    gross minor_units NOT NULL,
    fee minor_units NOT NULL DEFAULT 0
);
CREATE INDEX payout_entries_shop ON payout_entries (shop, at, set_id);
