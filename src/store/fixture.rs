//! One store fixture for every test that sets up a store by hand: shops,
//! carriers, subscribers with handsets, registers, top-ups, acceptance,
//! and answers signed as a handset signs them. It goes through the
//! boundary, so the same fixture serves every backend. For tests and
//! measurements only: a setup step that fails panics, naming the step.

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};

use crate::domain::{Amount, CarrierId, Currency, Decision, IpPrefix, RegisterId, ShopId, SubscriberNumber, UnixMs};

use super::{Funding, NewCarrier, NewHandset, NewRegister, NewShop, NewSubscriber, Store, TopUp, TradeRecord};

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
}
