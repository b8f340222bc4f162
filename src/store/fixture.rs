//! One store fixture for every test that sets up a store by hand: shops,
//! carriers, subscribers with handsets, registers, top-ups, acceptance,
//! and answers signed as a handset signs them. It goes through the
//! boundary, so the same fixture serves every backend. For tests and
//! measurements only: a setup step that fails panics, naming the step.

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::domain::{Amount, CarrierId, Currency, Decision, IpPrefix, RegisterId, ShopId, SubscriberNumber, UnixMs};

use std::sync::Arc;

use crate::domain::receipt::ReceiptSigner;
use crate::domain::{TradeId, TradeState};

use super::{
    Funding, HandsetAnswer, NewCarrier, NewHandset, NewRefund, NewRegister, NewShop, NewSubscriber, NewTrade, PayerRef,
    Store, TopUp, TradeRecord, TradeRequest,
};

/// Shops a fixture store may hold (far more than any test makes).
const FIXTURE_MAX_SHOPS: u32 = 1_000_000;
/// Open registers per shop in a fixture store.
const FIXTURE_MAX_REGISTERS: u32 = 1_000;

/// A store being set up, at one instant.
#[derive(Clone)]
pub struct Fixture {
    pub store: Store,
    pub now: UnixMs,
}

/// A distinct credential hash per party name.
fn token_hash(kind: &str, id: &str) -> [u8; 32] {
    Sha256::digest(format!("fixture:{kind}:{id}").as_bytes()).into()
}

pub fn jpy() -> Currency {
    Currency::parse("JPY").expect("a known currency")
}

pub fn number(text: &str) -> SubscriberNumber {
    SubscriberNumber::parse(text).expect("a valid number")
}

/// The signature a handset holding `key` makes to answer `trade`.
pub fn sign(key: &SigningKey, trade: &TradeRecord, decision: Decision) -> Vec<u8> {
    key.sign(&trade.signed_bytes(decision).expect("a well-formed trade")).to_bytes().to_vec()
}

impl Fixture {
    pub fn new(store: Store, now: UnixMs) -> Fixture {
        Fixture { store, now }
    }

    pub async fn shop(&self, id: &str, name: &str) -> ShopId {
        let id = ShopId::parse(id).expect("a valid shop id");
        let shop = NewShop {
            id: id.clone(),
            display_name: name.into(),
            token_hash: token_hash("shop", id.as_str()),
            max_shops: FIXTURE_MAX_SHOPS,
            now: self.now,
        };
        self.store.create_shop(shop).await.expect("create the shop");
        id
    }

    pub async fn carrier(&self, id: &str, name: &str, prefixes: &[&str], fee_bps: u32) -> CarrierId {
        let id = CarrierId::parse(id).expect("a valid carrier id");
        let carrier = NewCarrier {
            id: id.clone(),
            display_name: name.into(),
            token_hash: token_hash("carrier", id.as_str()),
            prefixes: prefixes.iter().map(|p| IpPrefix::parse(p).expect("a valid prefix")).collect(),
            fee_bps,
            // The lease suites push leases; ask mode is the engine's.
            resolve_mode: crate::domain::ResolveMode::Push,
            now: self.now,
        };
        self.store.create_carrier(carrier).await.expect("create the carrier");
        id
    }

    pub async fn register(&self, shop: &ShopId, label: &str) -> RegisterId {
        let id = RegisterId::generate().expect("entropy");
        let register = NewRegister {
            shop: shop.clone(),
            id,
            label: label.into(),
            max_registers: FIXTURE_MAX_REGISTERS,
            now: self.now,
        };
        self.store.open_register(register).await.expect("open the register");
        id
    }

    pub async fn subscriber(&self, carrier: &CarrierId, number: &SubscriberNumber, funding: Funding) {
        let s = NewSubscriber { carrier: carrier.clone(), number: number.clone(), funding, now: self.now };
        self.store.enroll_subscriber(s).await.expect("enroll the subscriber");
    }

    pub async fn handset(&self, carrier: &CarrierId, number: &SubscriberNumber, key: &SigningKey) {
        let h = NewHandset {
            carrier: carrier.clone(),
            number: number.clone(),
            public_key: key.verifying_key().to_bytes(),
            now: self.now,
        };
        self.store.enroll_handset(h).await.expect("enroll the handset");
    }

    /// A subscriber with `funding` and a handset holding `key`.
    pub async fn payer(&self, carrier: &CarrierId, number: &SubscriberNumber, funding: Funding, key: &SigningKey) {
        self.subscriber(carrier, number, funding).await;
        self.handset(carrier, number, key).await;
    }

    pub async fn top_up(&self, number: &SubscriberNumber, minor: u64, currency: Currency) {
        let t = TopUp { number: number.clone(), amount: Amount::new(minor), currency, now: self.now };
        self.store.top_up(t).await.expect("top up the wallet");
    }

    pub async fn accept(&self, carrier: &CarrierId, shop: &ShopId) {
        self.store.set_acceptance(carrier, shop, true).await.expect("accept the shop");
    }

    /// A trade of `minor` from `payer` (whose handset holds `key`, at
    /// `carrier`) at `shop`'s `register`, created and approved at `at`:
    /// settled from the payer's wallet or onto their carrier bill.
    #[allow(clippy::too_many_arguments)]
    pub async fn settle(
        &self,
        shop: &ShopId,
        register: RegisterId,
        carrier: &CarrierId,
        payer: &SubscriberNumber,
        key: &SigningKey,
        minor: u64,
        currency: Currency,
        at: UnixMs,
    ) -> TradeRecord {
        let trade = NewTrade {
            shop: shop.clone(),
            trade_id: TradeId::generate().expect("entropy"),
            request: TradeRequest {
                register,
                payer: PayerRef::Number(payer.clone()),
                amount: Amount::new(minor),
                currency,
                description: "fixture sale".into(),
                ttl_ms: 60_000,
            },
            idempotency_key: None,
            binding_code: "123456".into(),
            max_open_per_register: FIXTURE_MAX_REGISTERS,
            offer_gate: None,
            asked: None,
            now: at,
        };
        let created = self.store.create_trade(trade).await.expect("create the trade").trade;
        let answer = HandsetAnswer {
            carrier: carrier.clone(),
            trade: created.id,
            decision: Decision::Approve,
            signature: sign(key, &created, Decision::Approve),
            now: at,
            checked: None,
            signer: Arc::new(ReceiptSigner::from_seed([77; 32], at)),
        };
        let out = self.store.submit_answer(answer).await.expect("queue the answer").outcome().await.expect("answer");
        let settled = out.trade.expect("the trade after its answer");
        assert_eq!(settled.state, TradeState::Settled, "the fixture sale settles");
        settled
    }

    /// Refunds `minor` of a settled trade at `at`.
    pub async fn refund(&self, trade: &TradeRecord, minor: u64, at: UnixMs) {
        let r = NewRefund {
            shop: trade.shop.clone(),
            trade: trade.id,
            amount: Amount::new(minor),
            idempotency_key: None,
            now: at,
        };
        self.store.refund(r).await.expect("refund");
    }
}

/// 2027-01-15T08:00:00Z: the sales of [`billed_month`] are in January 2027.
pub const JAN_2027: UnixMs = UnixMs(1_800_000_000_000);
/// 2027-02-10T00:00:00Z: a sale of [`billed_month`] in February.
pub const FEB_2027: UnixMs = UnixMs(1_802_217_600_000);

/// A month of carrier-billed sales to remit: shops `acme` and `beta`,
/// carrier `docomo` (fee 250 bps) that accepts both, a carrier-billed
/// payer and a wallet payer. In January 2027 acme sells 10 000 (fee 250)
/// and 2 000 (fee 50, 500 refunded in January) on the bill and 3 000 from
/// the wallet; beta sells 4 000 (fee 100). In February acme sells 1 000
/// (fee 25). So docomo owes acme 11 200 and beta 3 900 for January, and
/// acme 975 for February.
pub struct BilledMonth {
    pub fixture: Fixture,
    pub acme: ShopId,
    pub beta: ShopId,
    pub docomo: CarrierId,
}

impl BilledMonth {
    /// What docomo owes acme for January 2027.
    pub const ACME_JAN_OWED: u64 = 11_200;
    pub const BETA_JAN_OWED: u64 = 3_900;
    pub const ACME_FEB_OWED: u64 = 975;
}

pub async fn billed_month(store: Store) -> BilledMonth {
    billed_month_at(store, JAN_2027, FEB_2027).await
}

/// 2026-01-15T08:00:00Z and 2026-02-10T00:00:00Z: [`billed_month_at`]'s
/// instants for a month long over, which a running server lets the
/// operator remit (it refuses a month that has not ended).
pub const JAN_2026: UnixMs = UnixMs(1_768_464_000_000);
pub const FEB_2026: UnixMs = UnixMs(1_770_681_600_000);

/// [`billed_month`]'s sales with the first month's at `month` and the
/// next month's sale at `next` (the same amounts are owed).
pub async fn billed_month_at(store: Store, month: UnixMs, next: UnixMs) -> BilledMonth {
    let fixture = Fixture::new(store, month);
    let acme = fixture.shop("acme", "Acme").await;
    let beta = fixture.shop("beta", "Beta").await;
    let docomo = fixture.carrier("docomo", "Docomo", &[], 250).await;
    fixture.accept(&docomo, &acme).await;
    fixture.accept(&docomo, &beta).await;
    let billed = number("+818030000001");
    let billed_key = SigningKey::from_bytes(&[31u8; 32]);
    let cap = Amount::new(1_000_000);
    fixture.payer(&docomo, &billed, Funding::CarrierBill { currency: jpy(), monthly_cap: cap }, &billed_key).await;
    let wallet = number("+818030000002");
    let wallet_key = SigningKey::from_bytes(&[32u8; 32]);
    fixture.payer(&docomo, &wallet, Funding::Wallet, &wallet_key).await;
    fixture.top_up(&wallet, 100_000, jpy()).await;
    let acme_till = fixture.register(&acme, "till").await;
    let beta_till = fixture.register(&beta, "till").await;
    let at = month;
    fixture.settle(&acme, acme_till, &docomo, &billed, &billed_key, 10_000, jpy(), at).await;
    let refunded = fixture.settle(&acme, acme_till, &docomo, &billed, &billed_key, 2_000, jpy(), at).await;
    fixture.refund(&refunded, 500, UnixMs(at.0 + 60_000)).await;
    fixture.settle(&acme, acme_till, &docomo, &wallet, &wallet_key, 3_000, jpy(), at).await;
    fixture.settle(&beta, beta_till, &docomo, &billed, &billed_key, 4_000, jpy(), at).await;
    fixture.settle(&acme, acme_till, &docomo, &billed, &billed_key, 1_000, jpy(), next).await;
    BilledMonth { fixture, acme, beta, docomo }
}
