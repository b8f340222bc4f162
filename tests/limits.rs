//! Every limit triggers, is `RESOURCE_EXHAUSTED`, and says which limit it
//! is: trades per shop, offers per subscriber (across shops), request size
//! (unary calls and the relay stream), watch streams per shop, open trades
//! per register, open registers per shop. (The relay queue depth is tested
//! beside `RelayHub`.) Each is set through `Limits`.

mod common;

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::manual_carrier::ManualCarrier;
use common::{functional_limits, TestServer};
use syncpay::proto;
use syncpay::sync_server::limits::Limits;
use syncpay::sync_server::rate_limit::Rate;
use tokio_stream::StreamExt;
use tonic::Code;

const PAYER: &str = "+818022220001";
const OTHER: &str = "+818022220002";

fn trade(register: &str, payer: &str) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register.into(),
        amount_minor: 100,
        currency: "JPY".into(),
        description: String::new(),
        ttl_seconds: 60,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(payer.into())),
    }
}

fn exhausted<T: std::fmt::Debug>(r: Result<T, tonic::Status>, starts: &str) -> String {
    let status = r.expect_err("the limit must trigger");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().starts_with(starts), "{:?} does not start with {starts:?}", status.message());
    status.message().to_owned()
}

#[tokio::test]
async fn trades_per_shop_are_rate_limited() {
    for backend in backends() {
        trades_per_shop_are_rate_limited_on(backend).await;
    }
}

async fn trades_per_shop_are_rate_limited_on(backend: &'static BackendFactory) {
    let limits = Limits { shop_trades: Rate::new(3, Duration::from_secs(3600)), ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &[], limits).await;
    let (reg_a, reg_b) = (t.open_register_as("acme").await, t.open_register_as("bobs").await);
    let mut acme = t.as_shop("acme").await;
    for _ in 0..3 {
        acme.create_trade(trade(&reg_a, PAYER)).await.expect("within the limit");
    }
    exhausted(acme.create_trade(trade(&reg_a, PAYER)).await, "trades per shop: at most 3 per hour; retry in ");
    // Another shop has its own budget.
    assert!(t.as_shop("bobs").await.create_trade(trade(&reg_b, PAYER)).await.is_ok());
}

#[tokio::test]
async fn offers_per_subscriber_are_rate_limited_across_shops() {
    for backend in backends() {
        offers_per_subscriber_are_rate_limited_across_shops_on(backend).await;
    }
}

async fn offers_per_subscriber_are_rate_limited_across_shops_on(backend: &'static BackendFactory) {
    let limits = Limits { subscriber_offers: Rate::new(2, Duration::from_secs(60)), ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &["docomo"], limits).await;
    // Only a trade that sends an offer counts, so the buyers have handsets.
    enroll_buyers(&t, &[PAYER, OTHER]).await;
    let (reg_a, reg_b) = (t.open_register_as("acme").await, t.open_register_as("bobs").await);
    let (mut acme, mut bobs) = (t.as_shop("acme").await, t.as_shop("bobs").await);
    acme.create_trade(trade(&reg_a, PAYER)).await.expect("first");
    bobs.create_trade(trade(&reg_b, PAYER)).await.expect("second");
    let message = exhausted(
        acme.create_trade(trade(&reg_a, PAYER)).await,
        "offers per subscriber: at most 2 per minute; retry in ",
    );
    assert!(!message.contains("8022220001"), "the refusal names the subscriber: {message}");
    exhausted(bobs.create_trade(trade(&reg_b, PAYER)).await, "offers per subscriber");
    // Other buyers are unaffected.
    assert!(acme.create_trade(trade(&reg_a, OTHER)).await.is_ok());
}

#[tokio::test]
async fn the_request_size_is_limited_on_calls_and_on_the_relay_stream() {
    for backend in backends() {
        the_request_size_is_limited_on_calls_and_on_the_relay_stream_on(backend).await;
    }
}

async fn the_request_size_is_limited_on_calls_and_on_the_relay_stream_on(backend: &'static BackendFactory) {
    // The default limit.
    let t = TestServer::start_tls_on(backend, &["acme"], &["docomo"], functional_limits()).await;
    let reg = t.open_register_as("acme").await;
    let mut acme = t.as_shop("acme").await;
    let big = proto::CreateTradeRequest { description: "x".repeat(70_000), ..trade(&reg, PAYER) };
    exhausted(acme.create_trade(big).await, "request size: a message may be at most 65536 bytes");
    // Just under it, the request is read and refused for what it says.
    let fits = proto::CreateTradeRequest { description: "x".repeat(60_000), ..trade(&reg, PAYER) };
    assert_eq!(acme.create_trade(fits).await.expect_err("too long").code(), Code::InvalidArgument);

    // A configured limit, on a unary call and on the relay stream.
    let limits = Limits { max_request_bytes: 1024, ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme"], &["docomo"], limits).await;
    let mut acme = t.as_shop("acme").await;
    let label = proto::OpenRegisterRequest { label: "x".repeat(2000) };
    exhausted(acme.open_register(label).await, "request size: a message may be at most 1024 bytes; this one has 2003");
    let relay_client = t.as_carrier("docomo").await;
    let mut relay = ManualCarrier::connect(relay_client).await;
    relay
        .send(proto::relay_up::Body::Answer(proto::HandsetAnswer {
            trade_id: "trd_x".into(),
            decision: 1,
            signature: vec![0u8; 4000],
        }))
        .await;
    let ended = relay.find(|_| None::<()>).await;
    exhausted(ended, "request size: a message may be at most 1024 bytes");
}

#[tokio::test]
async fn watch_streams_per_shop_are_limited() {
    for backend in backends() {
        watch_streams_per_shop_are_limited_on(backend).await;
    }
}

async fn watch_streams_per_shop_are_limited_on(backend: &'static BackendFactory) {
    let limits = Limits { max_watch_streams_per_shop: 2, ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &[], limits).await;
    let mut acme = t.as_shop("acme").await;
    let watch = proto::WatchTradesRequest { after_sequence: 0, register_id: String::new() };
    let first = acme.watch_trades(watch.clone()).await.expect("first");
    let _second = acme.watch_trades(watch.clone()).await.expect("second");
    exhausted(acme.watch_trades(watch.clone()).await, "watch streams per shop: at most 2 open at once");
    assert!(t.as_shop("bobs").await.watch_trades(watch.clone()).await.is_ok());
    // Closing one gives its slot back once the server sees it go.
    drop(first);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match acme.watch_trades(watch.clone()).await {
            Ok(mut s) => {
                // The stream is live (nothing to send yet).
                assert!(tokio::time::timeout(Duration::from_millis(50), s.get_mut().next()).await.is_err());
                break;
            }
            Err(s) if s.code() == Code::ResourceExhausted && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("the slot was not given back: {s:?}"),
        }
    }
}

#[tokio::test]
async fn open_trades_per_register_and_open_registers_per_shop_are_limited() {
    for backend in backends() {
        open_trades_per_register_and_open_registers_per_shop_are_limited_on(backend).await;
    }
}

async fn open_trades_per_register_and_open_registers_per_shop_are_limited_on(backend: &'static BackendFactory) {
    let limits = Limits { max_open_trades_per_register: 2, max_open_registers_per_shop: 1, ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme"], &[], limits).await;
    // The payer needs a handset for a trade to stay open.
    t.create_carrier("docomo", "Docomo").await;
    let mut carrier = t.as_carrier("docomo").await;
    common::enroll_with_key(&mut carrier, PAYER, &ed25519_dalek::SigningKey::from_bytes(&[3; 32])).await;
    let reg = t.open_register_as("acme").await;
    let mut acme = t.as_shop("acme").await;
    exhausted(
        acme.open_register(proto::OpenRegisterRequest { label: "second".into() }).await,
        "at most 1 open registers per shop",
    );
    acme.create_trade(trade(&reg, PAYER)).await.expect("1");
    acme.create_trade(trade(&reg, PAYER)).await.expect("2");
    exhausted(acme.create_trade(trade(&reg, PAYER)).await, "open trades per register: at most 2");
}

/// A handset key for the buyers of these tests: with a handset enrolled a
/// trade stays open and its offer is really sent.
fn handset_key() -> ed25519_dalek::SigningKey {
    ed25519_dalek::SigningKey::from_bytes(&[3; 32])
}

async fn enroll_buyers(t: &TestServer, numbers: &[&str]) {
    let mut carrier = t.as_carrier("docomo").await;
    for number in numbers {
        common::enroll_with_key(&mut carrier, number, &handset_key()).await;
    }
}

fn keyed(register: &str, payer: &str, key: &str) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest { idempotency_key: key.into(), ..trade(register, payer) }
}

/// The refusal's code and message; a success is `OK` with no message.
fn code_and_message<T>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(_) => (Code::Ok, String::new()),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

/// Issue 11: a retry is not a new offer. Replays return the original trade
/// and a conflicting reuse is ALREADY_EXISTS however spent the buyer's
/// allowance is, and neither spends any of it.
#[tokio::test]
async fn an_idempotent_retry_is_not_a_new_offer() {
    for backend in backends() {
        an_idempotent_retry_is_not_a_new_offer_on(backend).await;
    }
}

async fn an_idempotent_retry_is_not_a_new_offer_on(backend: &'static BackendFactory) {
    let limits = Limits { subscriber_offers: Rate::new(2, Duration::from_secs(60)), ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &["docomo"], limits).await;
    enroll_buyers(&t, &[PAYER]).await;
    let (reg_a, reg_b) = (t.open_register_as("acme").await, t.open_register_as("bobs").await);
    let (mut acme, mut bobs) = (t.as_shop("acme").await, t.as_shop("bobs").await);
    let first = acme.create_trade(keyed(&reg_a, PAYER, "order-1")).await.expect("first").into_inner();
    assert_eq!(first.state, proto::TradeState::Pending as i32);
    for i in 0..5 {
        let again = acme.create_trade(keyed(&reg_a, PAYER, "order-1")).await;
        assert_eq!(again.unwrap_or_else(|s| panic!("replay {i}: {s:?}")).into_inner().trade_id, first.trade_id);
    }
    let conflict = proto::CreateTradeRequest { amount_minor: 101, ..keyed(&reg_a, PAYER, "order-1") };
    let (code, message) = code_and_message(acme.create_trade(conflict.clone()).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
    assert!(message.starts_with("amount_minor"), "{message}");
    // One offer was sent, so one is left: another shop sends it, then the
    // buyer's allowance is spent.
    bobs.create_trade(trade(&reg_b, PAYER)).await.expect("the second offer");
    exhausted(bobs.create_trade(trade(&reg_b, PAYER)).await, "offers per subscriber");
    // Spent or not, the retry still gets its trade back and the conflict
    // is still the conflict.
    let again = acme.create_trade(keyed(&reg_a, PAYER, "order-1")).await.expect("replay after the allowance is spent");
    assert_eq!(again.into_inner().trade_id, first.trade_id);
    let (code, message) = code_and_message(acme.create_trade(conflict).await);
    assert_eq!(code, Code::AlreadyExists, "{message}");
}

/// Replays count against the shop's own rate (they cost the server the
/// same work as any request); the refusal says when to retry, and the
/// retry then returns the original trade.
#[tokio::test]
async fn a_replay_refused_by_the_shops_rate_gets_its_trade_back_after_the_wait() {
    for backend in backends() {
        a_replay_refused_by_the_shops_rate_gets_its_trade_back_after_the_wait_on(backend).await;
    }
}

async fn a_replay_refused_by_the_shops_rate_gets_its_trade_back_after_the_wait_on(backend: &'static BackendFactory) {
    let limits = Limits { shop_trades: Rate::new(2, Duration::from_secs(1)), ..functional_limits() };
    let t = TestServer::start_tls_on(backend, &["acme"], &["docomo"], limits).await;
    enroll_buyers(&t, &[PAYER]).await;
    let reg = t.open_register_as("acme").await;
    let mut acme = t.as_shop("acme").await;
    let first = acme.create_trade(keyed(&reg, PAYER, "order-1")).await.expect("first").into_inner();
    acme.create_trade(keyed(&reg, PAYER, "order-1")).await.expect("replay within the rate");
    let message = exhausted(
        acme.create_trade(keyed(&reg, PAYER, "order-1")).await,
        "trades per shop: at most 2 per second; retry in ",
    );
    let wait_ms: u64 = message
        .rsplit("retry in ")
        .next()
        .and_then(|s| s.trim_end_matches(" ms").parse().ok())
        .unwrap_or_else(|| panic!("no wait in {message:?}"));
    // The wait is the thing under test here.
    tokio::time::sleep(Duration::from_millis(wait_ms + 20)).await;
    let again = acme.create_trade(keyed(&reg, PAYER, "order-1")).await.expect("replay after the wait");
    assert_eq!(again.into_inner().trade_id, first.trade_id);
}

/// Issue 12 (weak 2): a request that sends no offer spends none of the
/// buyer's allowance: an unknown or closed register, an invalid TTL, too
/// many open trades, an unknown payer, a payer without a handset.
#[tokio::test]
async fn only_a_trade_that_sends_an_offer_counts_against_the_buyer() {
    for backend in backends() {
        only_a_trade_that_sends_an_offer_counts_against_the_buyer_on(backend).await;
    }
}

async fn only_a_trade_that_sends_an_offer_counts_against_the_buyer_on(backend: &'static BackendFactory) {
    let limits = Limits {
        subscriber_offers: Rate::new(2, Duration::from_secs(60)),
        max_open_trades_per_register: 1,
        ..functional_limits()
    };
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &["docomo"], limits).await;
    enroll_buyers(&t, &[PAYER]).await;
    let (reg_a, reg_b) = (t.open_register_as("acme").await, t.open_register_as("bobs").await);
    let (mut acme, mut bobs) = (t.as_shop("acme").await, t.as_shop("bobs").await);

    // Five trades on a register that does not exist.
    let nowhere = syncpay::domain::RegisterId::generate().expect("id").to_string();
    for i in 0..5 {
        let (code, message) = code_and_message(acme.create_trade(trade(&nowhere, PAYER)).await);
        assert_eq!(code, Code::NotFound, "attempt {i}: {message}");
    }
    // A closed register.
    let closed = acme.open_register(proto::OpenRegisterRequest { label: "old".into() }).await.expect("open");
    let closed = closed.into_inner().register_id;
    acme.close_register(proto::CloseRegisterRequest { register_id: closed.clone() }).await.expect("close");
    let (code, message) = code_and_message(acme.create_trade(trade(&closed, PAYER)).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    // An invalid lifetime.
    let (code, message) = code_and_message(
        acme.create_trade(proto::CreateTradeRequest { ttl_seconds: 5_000, ..trade(&reg_a, PAYER) }).await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    // One real offer, then the register is full: that refusal costs nothing.
    acme.create_trade(trade(&reg_a, PAYER)).await.expect("the first offer");
    exhausted(acme.create_trade(trade(&reg_a, PAYER)).await, "open trades per register");
    // So the buyer has exactly one offer left, at any shop. (One open trade
    // per register here, so each offer below gets a register of its own.)
    bobs.create_trade(trade(&reg_b, PAYER)).await.expect("the second offer");
    let fresh = t.open_register_as("bobs").await;
    exhausted(bobs.create_trade(trade(&fresh, PAYER)).await, "offers per subscriber");

    // A buyer the server does not know yet, then one without a handset:
    // their trades fail at once and send nothing.
    for _ in 0..2 {
        let failed = bobs.create_trade(trade(&fresh, OTHER)).await.expect("created FAILED").into_inner();
        assert_eq!(failed.failure_reason, proto::FailureReason::PayerUnknown as i32);
    }
    let mut carrier = t.as_carrier("docomo").await;
    carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: OTHER.into(),
            funding: proto::Funding::Wallet as i32,
            ..Default::default()
        })
        .await
        .expect("enroll");
    for _ in 0..2 {
        let failed = bobs.create_trade(trade(&fresh, OTHER)).await.expect("created FAILED").into_inner();
        assert_eq!(failed.failure_reason, proto::FailureReason::NoHandset as i32);
    }
    carrier
        .enroll_handset(proto::EnrollHandsetRequest {
            subscriber_number: OTHER.into(),
            public_key: handset_key().verifying_key().to_bytes().to_vec(),
        })
        .await
        .expect("handset");
    bobs.create_trade(trade(&fresh, OTHER)).await.expect("a first real offer");
    let third = t.open_register_as("bobs").await;
    bobs.create_trade(trade(&third, OTHER)).await.expect("a second real offer");
    let fourth = t.open_register_as("bobs").await;
    exhausted(bobs.create_trade(trade(&fourth, OTHER)).await, "offers per subscriber");
}

/// The allowance is decided where trades are created, one at a time: many
/// shops racing for one buyer, with replays and refused requests mixed in,
/// send exactly the allowance, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_shops_send_a_buyer_exactly_the_allowance() {
    for backend in backends() {
        racing_shops_send_a_buyer_exactly_the_allowance_on(backend).await;
    }
}

async fn racing_shops_send_a_buyer_exactly_the_allowance_on(backend: &'static BackendFactory) {
    const ALLOWANCE: usize = 3;
    let rate = Rate::new(u32::try_from(ALLOWANCE).expect("small"), Duration::from_secs(60));
    let limits = Limits { subscriber_offers: rate, ..functional_limits() };
    let shops = ["acme", "bobs", "carl"];
    let t = TestServer::start_tls_on(backend, &shops, &["docomo"], limits).await;
    enroll_buyers(&t, &[PAYER]).await;
    let nowhere = syncpay::domain::RegisterId::generate().expect("id").to_string();
    let mut calls = Vec::new();
    for shop in shops {
        let register = t.open_register_as(shop).await;
        let client = t.as_shop(shop).await;
        for i in 0..9 {
            let request = match i % 3 {
                0 => trade(&register, PAYER),
                1 => keyed(&register, PAYER, "same-order"),
                _ => trade(&nowhere, PAYER),
            };
            let mut client = client.clone();
            calls.push(tokio::spawn(async move { (i % 3, client.create_trade(request).await) }));
        }
    }
    let mut created = std::collections::BTreeSet::new();
    for call in calls {
        match call.await.expect("task") {
            (2, Err(s)) if s.code() == Code::NotFound => {}
            (0 | 1, Err(s)) if s.code() == Code::ResourceExhausted => {
                assert!(s.message().starts_with("offers per subscriber"), "{s:?}")
            }
            (0 | 1, Ok(trade)) => {
                let trade = trade.into_inner();
                assert_eq!(trade.state, proto::TradeState::Pending as i32);
                created.insert(trade.trade_id);
            }
            (kind, other) => panic!("request kind {kind}: {other:?}"),
        }
    }
    assert_eq!(created.len(), ALLOWANCE, "{created:?}");
    // And no other trade exists: refused requests left nothing behind.
    let report = t.assert_ledger_ok().await;
    assert_eq!(report.trades_checked, u64::try_from(ALLOWANCE).expect("small"));
}
