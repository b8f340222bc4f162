//! Every limit triggers, is `RESOURCE_EXHAUSTED`, and says which limit it
//! is: trades per shop, offers per subscriber (across shops), request size
//! (unary calls and the relay stream), watch streams per shop, open trades
//! per register, open registers per shop. (The relay queue depth is tested
//! beside `RelayHub`.) Each is set through `Limits`.

mod common;

use std::time::Duration;

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
    let limits = Limits { shop_trades: Rate::new(3, Duration::from_secs(3600)), ..functional_limits() };
    let t = TestServer::start_tls(&["acme", "bobs"], &[], limits).await;
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
    let limits = Limits { subscriber_offers: Rate::new(2, Duration::from_secs(60)), ..functional_limits() };
    let t = TestServer::start_tls(&["acme", "bobs"], &[], limits).await;
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
    // The default limit.
    let t = TestServer::start_tls(&["acme"], &["docomo"], functional_limits()).await;
    let reg = t.open_register_as("acme").await;
    let mut acme = t.as_shop("acme").await;
    let big = proto::CreateTradeRequest { description: "x".repeat(70_000), ..trade(&reg, PAYER) };
    exhausted(acme.create_trade(big).await, "request size: a message may be at most 65536 bytes");
    // Just under it, the request is read and refused for what it says.
    let fits = proto::CreateTradeRequest { description: "x".repeat(60_000), ..trade(&reg, PAYER) };
    assert_eq!(acme.create_trade(fits).await.expect_err("too long").code(), Code::InvalidArgument);

    // A configured limit, on a unary call and on the relay stream.
    let limits = Limits { max_request_bytes: 1024, ..functional_limits() };
    let t = TestServer::start_tls(&["acme"], &["docomo"], limits).await;
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
    let limits = Limits { max_watch_streams_per_shop: 2, ..functional_limits() };
    let t = TestServer::start_tls(&["acme", "bobs"], &[], limits).await;
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
    let limits = Limits { max_open_trades_per_register: 2, max_open_registers_per_shop: 1, ..functional_limits() };
    let t = TestServer::start_tls(&["acme"], &[], limits).await;
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
