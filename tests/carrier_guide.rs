//! What `docs/CARRIER.md` and the proto promise a carrier, checked against
//! a real server one claim at a time: how a relay stream ends and why (a
//! newer stream of the carrier, server shutdown), redelivery with the same
//! delivery id until acknowledged, withdrawals and what an answer after
//! one gets, uplink mistakes that leave the stream open, and the error
//! codes the proto lists for each CarrierService RPC.

mod common;

use std::time::Duration;

use common::manual_carrier::{sign, ManualCarrier};
use common::{code_of, TestServer};
use ed25519_dalek::SigningKey;
use syncpay::client::AuthedChannel;
use syncpay::domain::Decision;
use syncpay::proto::{self, carrier_service_client::CarrierServiceClient, relay_down, TradeState};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

const WAIT: Duration = Duration::from_secs(15);
const PAYER: &str = "+818055550001";

fn key() -> SigningKey {
    SigningKey::from_bytes(&[5; 32])
}

struct World {
    t: TestServer,
    shop: proto::register_service_client::RegisterServiceClient<AuthedChannel>,
    carrier_token: String,
    register_id: String,
}

/// Shop `acme` with a register, carrier `docomo` whose subscriber PAYER
/// has a funded wallet and the handset key `key()`.
async fn world() -> World {
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    common::enroll_with_key(&mut t.carrier(&carrier_token).await, PAYER, &key()).await;
    t.top_up(PAYER, 100_000, "JPY").await;
    let mut shop = t.shop(&shop_token).await;
    let register_id = shop
        .open_register(proto::OpenRegisterRequest { label: "till".into() })
        .await
        .expect("register")
        .into_inner()
        .register_id;
    World { t, shop, carrier_token, register_id }
}

impl World {
    async fn carrier(&self) -> CarrierServiceClient<AuthedChannel> {
        self.t.carrier(&self.carrier_token).await
    }

    async fn create(&mut self) -> proto::Trade {
        let request = proto::CreateTradeRequest {
            register_id: self.register_id.clone(),
            amount_minor: 700,
            currency: "JPY".into(),
            description: "tea".into(),
            ttl_seconds: 120,
            idempotency_key: String::new(),
            payer: Some(proto::create_trade_request::Payer::SubscriberNumber(PAYER.into())),
        };
        self.shop.create_trade(request).await.expect("create").into_inner()
    }
}

/// A relay stream read message by message, to see exactly how it ends.
struct RawStream {
    up: mpsc::Sender<proto::RelayUp>,
    down: Streaming<proto::RelayDown>,
}

impl RawStream {
    async fn open(mut client: CarrierServiceClient<AuthedChannel>) -> RawStream {
        let (up, rx) = mpsc::channel(8);
        let down = client.relay(ReceiverStream::new(rx)).await.expect("relay").into_inner();
        RawStream { up, down }
    }

    /// Reads until the stream ends; returns how (None: ended without a
    /// status, i.e. OK).
    async fn end(&mut self) -> Option<tonic::Status> {
        loop {
            match tokio::time::timeout(WAIT, self.down.message()).await.expect("the stream must end") {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    }
}

#[tokio::test]
async fn a_newer_stream_of_the_carrier_replaces_the_older_which_ends_aborted() {
    let mut w = world().await;
    let mut old = RawStream::open(w.carrier().await).await;
    let mut new = ManualCarrier::connect(w.carrier().await).await;
    let ended = old.end().await.expect("the older stream ends with a status");
    assert_eq!(ended.code(), Code::Aborted, "{ended:?}");
    assert_eq!(ended.message(), "replaced by a newer relay stream of this carrier");
    // Offers now go to the newer stream.
    let trade = w.create().await;
    let (delivery, _) = new.offer(&trade.trade_id).await;
    assert!(delivery > 0);
}

#[tokio::test]
async fn the_relay_stream_ends_unavailable_when_the_server_shuts_down() {
    let w = world().await;
    let mut stream = RawStream::open(w.carrier().await).await;
    // The stream is attached once the server has sent its first frame
    // (headers); give the shutdown something to end.
    let shutdown = tokio::spawn(w.t.server.shutdown());
    let ended = stream.end().await;
    shutdown.await.expect("join").expect("clean shutdown");
    let ended = ended.expect("the stream must end with a status saying why, not a silent OK");
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    assert!(ended.message().contains("shutting down"), "{}", ended.message());
}

#[tokio::test]
async fn closing_the_sending_side_ends_the_stream() {
    let w = world().await;
    let mut stream = RawStream::open(w.carrier().await).await;
    let (closed, _) = mpsc::channel(1);
    stream.up = closed;
    assert!(stream.end().await.is_none(), "a half-close ends the stream cleanly");
}

#[tokio::test]
async fn unacknowledged_deliveries_come_again_with_their_ids_until_acknowledged() {
    let mut w = world().await;
    let mut first = ManualCarrier::connect(w.carrier().await).await;
    let trade = w.create().await;
    let (delivery, offer) = first.offer(&trade.trade_id).await;
    drop(first);

    // Not acknowledged: the next stream gets it again, same id, same bytes.
    let mut second = ManualCarrier::connect(w.carrier().await).await;
    let (again, offer_again) = second.offer(&trade.trade_id).await;
    assert_eq!((again, &offer_again), (delivery, &offer));
    second.ack(delivery).await;
    // The ack made the trade OFFERED; once that is visible the ack is durable.
    wait_for_state(&mut w, &trade.trade_id, TradeState::Offered).await;
    drop(second);

    // Acknowledged: a new stream replays nothing of it. A cancel's
    // withdrawal is then the first message the new stream carries for it.
    let cancelled =
        w.shop.cancel_trade(proto::CancelTradeRequest { trade_id: trade.trade_id.clone() }).await.expect("cancel");
    assert_eq!(cancelled.into_inner().state, TradeState::Cancelled as i32);
    let mut third = ManualCarrier::connect(w.carrier().await).await;
    let first_for_trade = third
        .find(|m| match &m.body {
            Some(relay_down::Body::Offer(o)) if o.trade_id == trade.trade_id => Some("offer"),
            Some(relay_down::Body::Withdraw(x)) if x.trade_id == trade.trade_id => Some("withdraw"),
            _ => None,
        })
        .await
        .expect("a message for the trade");
    assert_eq!(first_for_trade, "withdraw", "an acknowledged offer was replayed");
}

async fn wait_for_state(w: &mut World, trade_id: &str, state: TradeState) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let t = w
            .shop
            .await_trade(proto::AwaitTradeRequest { trade_id: trade_id.into(), wait_ms: 200 })
            .await
            .expect("await")
            .into_inner();
        if t.state == state as i32 {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "trade never reached {state:?}: {t:?}");
    }
}

#[tokio::test]
async fn an_answer_after_a_withdrawal_gets_the_final_state_and_moves_nothing() {
    let mut w = world().await;
    let mut relay = ManualCarrier::connect(w.carrier().await).await;
    let trade = w.create().await;
    let (offer_delivery, offer) = relay.offer(&trade.trade_id).await;
    relay.ack(offer_delivery).await;
    w.shop.cancel_trade(proto::CancelTradeRequest { trade_id: trade.trade_id.clone() }).await.expect("cancel");

    let (withdraw_delivery, withdraw) = relay
        .find(|m| match &m.body {
            Some(relay_down::Body::Withdraw(x)) if x.trade_id == trade.trade_id => Some((m.delivery_id, x.clone())),
            _ => None,
        })
        .await
        .expect("withdrawal");
    assert!(withdraw_delivery > offer_delivery, "delivery ids increase");
    assert_eq!(withdraw.state, TradeState::Cancelled as i32);
    assert_eq!(withdraw.subscriber_number, PAYER);
    relay.ack(withdraw_delivery).await;

    // The buyer's approval crossed the withdrawal.
    relay.answer(&trade.trade_id, Decision::Approve, sign(&key(), &offer, Decision::Approve)).await;
    let down = relay
        .find(|m| match &m.body {
            Some(relay_down::Body::AnswerResult(r)) if r.trade_id == trade.trade_id => Some(m.clone()),
            _ => None,
        })
        .await
        .expect("verdict");
    assert_eq!(down.delivery_id, 0, "verdicts are not acknowledged");
    let Some(relay_down::Body::AnswerResult(result)) = down.body else { unreachable!() };
    assert!(!result.accepted);
    assert_eq!(result.state, TradeState::Cancelled as i32);
    assert_eq!(result.message, "trade is already CANCELLED");
    assert_eq!(w.t.balance(&format!("wallet:{PAYER}:JPY")).await, 100_000);
}

#[tokio::test]
async fn uplink_mistakes_are_answered_or_ignored_and_the_stream_stays_open() {
    let mut w = world().await;
    let mut relay = ManualCarrier::connect(w.carrier().await).await;
    let trade = w.create().await;
    let (delivery, offer) = relay.offer(&trade.trade_id).await;

    // Acks of ids never sent (or 0), and a message with no body: ignored.
    relay.ack(delivery + 1_000_000).await;
    relay.ack(0).await;
    relay.send_message(proto::RelayUp { body: None }).await;
    // A malformed answer: a verdict naming the field; the trade stays open.
    relay.answer("trd_not-a-trade", Decision::Approve, vec![0; 64]).await;
    let refused = relay.answer_result("trd_not-a-trade").await;
    assert!(!refused.accepted);
    assert!(refused.message.starts_with("answer.trade_id: "), "{}", refused.message);
    relay.answer(&trade.trade_id, Decision::Approve, vec![1; 10]).await;
    let refused = relay.answer_result(&trade.trade_id).await;
    assert!(refused.message.starts_with("answer.signature: must be 64 bytes"), "{}", refused.message);
    assert_eq!(refused.state, TradeState::Unspecified as i32);

    // The same stream still settles the trade.
    relay.ack(delivery).await;
    relay.answer(&trade.trade_id, Decision::Approve, sign(&key(), &offer, Decision::Approve)).await;
    let settled = relay.answer_result(&trade.trade_id).await;
    assert!(settled.accepted, "{settled:?}");
    assert_eq!(settled.state, TradeState::Settled as i32);
    // A repeat of the same answer settles nothing twice.
    relay.answer(&trade.trade_id, Decision::Approve, sign(&key(), &offer, Decision::Approve)).await;
    let repeat = relay.answer_result(&trade.trade_id).await;
    assert_eq!((repeat.accepted, repeat.message.as_str()), (false, "trade is already SETTLED"));
    assert_eq!(w.t.balance(&format!("wallet:{PAYER}:JPY")).await, 100_000 - 700);
}

/// The code of a refusal and the field its message starts with.
fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    let s = r.expect_err("refused");
    (s.code(), s.message().split(':').next().unwrap_or_default().to_owned())
}

/// The codes the proto lists for each unary CarrierService RPC.
#[tokio::test]
async fn each_carrier_rpc_answers_the_codes_the_proto_lists() {
    let w = world().await;
    let mut c = w.carrier().await;
    let other = w.t.create_carrier("kddi", "KDDI").await;
    let mut kddi = w.t.carrier(&other).await;
    let subscriber = |number: &str, funding: proto::Funding, currency: &str, cap: u64| proto::EnrollSubscriberRequest {
        subscriber_number: number.into(),
        funding: funding as i32,
        bill_currency: currency.into(),
        monthly_cap_minor: cap,
    };

    // EnrollSubscriber.
    use proto::Funding::{CarrierBill, Unspecified, Wallet};
    assert_eq!(
        refused(c.enroll_subscriber(subscriber("0801234", Wallet, "", 0)).await),
        (Code::InvalidArgument, "subscriber_number".into())
    );
    assert_eq!(
        refused(c.enroll_subscriber(subscriber("+818055550009", Unspecified, "", 0)).await),
        (Code::InvalidArgument, "funding".into())
    );
    assert_eq!(
        refused(c.enroll_subscriber(subscriber("+818055550009", CarrierBill, "XXX", 100)).await),
        (Code::InvalidArgument, "bill_currency".into())
    );
    assert_eq!(
        refused(c.enroll_subscriber(subscriber("+818055550009", CarrierBill, "JPY", 0)).await),
        (Code::InvalidArgument, "monthly_cap_minor".into())
    );
    assert_eq!(
        refused(kddi.enroll_subscriber(subscriber(PAYER, Wallet, "", 0)).await),
        (Code::FailedPrecondition, "subscriber_number".into())
    );
    // Enrolling again updates the funding.
    let billed = c.enroll_subscriber(subscriber(PAYER, CarrierBill, "JPY", 5_000)).await.expect("update");
    assert_eq!(billed.into_inner().funding, CarrierBill as i32);

    // EnrollHandset.
    let handset =
        |number: &str, key: Vec<u8>| proto::EnrollHandsetRequest { subscriber_number: number.into(), public_key: key };
    let public = key().verifying_key().to_bytes().to_vec();
    assert_eq!(code_of(c.enroll_handset(handset("+818055550009", public.clone())).await), Code::NotFound);
    assert_eq!(code_of(kddi.enroll_handset(handset(PAYER, public.clone())).await), Code::NotFound);
    assert_eq!(code_of(c.enroll_handset(handset(PAYER, vec![7; 31])).await), Code::InvalidArgument);
    // The identity point is a weak key.
    let mut identity = vec![0u8; 32];
    identity[0] = 1;
    assert_eq!(code_of(c.enroll_handset(handset(PAYER, identity)).await), Code::InvalidArgument);
    let enrolled = c.enroll_handset(handset(PAYER, public.clone())).await.expect("enroll").into_inner();
    assert_eq!(enrolled.key_sha256, syncpay::domain::approval::key_sha256(&key().verifying_key().to_bytes()));

    // ReportLeases (docomo has no prefixes yet).
    let start = |ip: &str, number: &str| proto::LeaseStart {
        ip: ip.into(),
        port_lo: 0,
        port_hi: 0,
        subscriber_number: number.into(),
        start_ms: 1_700_000_000_000,
    };
    let leases = |starts: Vec<proto::LeaseStart>| proto::ReportLeasesRequest { starts, stops: Vec::new() };
    // A new carrier is in ask mode: it keeps its leases, and a non-empty
    // batch is refused naming its first entry (an empty one records
    // nothing). SetResolveMode chooses push; an unknown mode is refused.
    let status = c.report_leases(leases(vec![start("198.51.100.7", PAYER)])).await.expect_err("ask mode");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("starts[0]: this carrier resolves addresses itself"), "{}", status.message());
    let empty = c.report_leases(leases(Vec::new())).await.expect("an empty batch").into_inner();
    assert_eq!((empty.starts_recorded, empty.stops_recorded), (0, 0));
    let mode = |mode: i32| proto::SetResolveModeRequest { mode };
    assert_eq!(code_of(c.set_resolve_mode(mode(99)).await), Code::InvalidArgument);
    let set = c.set_resolve_mode(mode(proto::ResolveMode::Push as i32)).await.expect("push").into_inner();
    assert_eq!(set.mode, proto::ResolveMode::Push as i32);
    let status = c.report_leases(leases(vec![start("198.51.100.7", PAYER)])).await.expect_err("outside");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().starts_with("starts[0].ip: "), "{}", status.message());
    let status = c.report_leases(leases(vec![start("198.51.100.999", PAYER)])).await.expect_err("malformed");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("lease: starts[0].ip"), "{}", status.message());
    let many = leases((0..1001).map(|_| start("198.51.100.7", PAYER)).collect());
    let status = c.report_leases(many).await.expect_err("too many");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().starts_with("starts: at most 1000"), "{}", status.message());

    // AcceptShop / RevokeShop.
    let accept = |shop: &str| proto::AcceptShopRequest { shop_id: shop.into() };
    assert_eq!(code_of(c.accept_shop(accept("nobody")).await), Code::NotFound);
    assert_eq!(code_of(c.accept_shop(accept("Not A Slug")).await), Code::InvalidArgument);
    assert!(c.accept_shop(accept("acme")).await.expect("accept").into_inner().accepted);
    assert!(c.accept_shop(accept("acme")).await.expect("again: idempotent").into_inner().accepted);
    let revoked = c.revoke_shop(proto::RevokeShopRequest { shop_id: "acme".into() }).await.expect("revoke");
    assert!(!revoked.into_inner().accepted);
    assert_eq!(code_of(c.revoke_shop(proto::RevokeShopRequest { shop_id: "nobody".into() }).await), Code::NotFound);

    // GetStatement.
    let statement = |number: &str, month: &str| proto::GetStatementRequest {
        subscriber_number: number.into(),
        month: month.into(),
        carrier_id: String::new(),
    };
    assert_eq!(code_of(c.get_statement(statement(PAYER, "2026-13")).await), Code::InvalidArgument);
    assert_eq!(code_of(kddi.get_statement(statement(PAYER, "2026-11")).await), Code::NotFound);
    let empty = c.get_statement(statement(PAYER, "2026-11")).await.expect("statement").into_inner();
    assert_eq!((empty.monthly_cap_minor, empty.total_minor, empty.lines.len()), (5_000, 0, 0));
    c.enroll_subscriber(subscriber(PAYER, Wallet, "", 0)).await.expect("back to the wallet");
    assert_eq!(code_of(c.get_statement(statement(PAYER, "2026-11")).await), Code::NotFound, "a wallet has no bill");

    // Every RPC: another party's credential, and none.
    let shop_token = w.t.create_shop("bobs", "Bob's").await;
    let mut as_shop = w.t.carrier(&shop_token).await;
    assert_eq!(code_of(as_shop.accept_shop(accept("acme")).await), Code::PermissionDenied);
    let mut anonymous = CarrierServiceClient::new(w.t.channel().await);
    assert_eq!(code_of(anonymous.accept_shop(accept("acme")).await), Code::Unauthenticated);
}

/// Offers waiting in the outbox while the carrier was away.
const BACKLOG: usize = 400;
/// The relay queue for the backlog test: far below the backlog.
const SMALL_QUEUE: usize = 8;

/// A carrier that reconnects to a backlog larger than the relay queue and
/// reads it as fast as the network lets it is not "too slow": a live
/// message during the catch-up must not end the stream RESOURCE_EXHAUSTED.
#[tokio::test]
async fn a_catch_up_longer_than_the_relay_queue_survives_live_messages() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = syncpay::sync_server::ServerConfig::from_data_dir(dir.path()).expect("config");
    config.limits =
        syncpay::sync_server::limits::Limits { relay_queue_depth: SMALL_QUEUE, ..common::functional_limits() };
    let t = TestServer::start_with(config, dir.path().to_owned(), Some(dir)).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    common::enroll_with_key(&mut t.carrier(&carrier_token).await, PAYER, &key()).await;
    let shop = t.shop(&shop_token).await;
    let register_id = shop
        .clone()
        .open_register(proto::OpenRegisterRequest { label: "till".into() })
        .await
        .expect("register")
        .into_inner()
        .register_id;
    let request = |n: usize| proto::CreateTradeRequest {
        register_id: register_id.clone(),
        amount_minor: 100,
        currency: "JPY".into(),
        description: format!("backlog {n}"),
        ttl_seconds: 600,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(PAYER.into())),
    };
    let mut creating = tokio::task::JoinSet::new();
    for n in 0..BACKLOG {
        let (mut shop, request) = (shop.clone(), request(n));
        creating.spawn(async move { shop.create_trade(request).await.expect("create").into_inner().trade_id });
    }
    let mut waiting: std::collections::HashSet<String> = creating.join_all().await.into_iter().collect();

    // A stream window of 64 KiB (HTTP/2's default; tonic's is larger)
    // makes the catch-up wait on the network, as over a real link.
    let channel = tonic::transport::Endpoint::from_shared(t.server.url())
        .expect("url")
        .initial_stream_window_size(65_535)
        .connect()
        .await
        .expect("connect");
    let client = CarrierServiceClient::new(syncpay::client::with_token(channel, &carrier_token).expect("token"));
    let mut stream = RawStream::open(client).await;
    let first = tokio::time::timeout(WAIT, stream.down.message()).await.expect("first").expect("ok").expect("some");
    assert!(matches!(first.body, Some(relay_down::Body::Offer(_))));
    // A live offer while the catch-up is under way.
    let mut shop = shop.clone();
    let live = shop.create_trade(request(BACKLOG)).await.expect("create").into_inner().trade_id;
    waiting.insert(live);
    let note = |waiting: &mut std::collections::HashSet<String>, m: proto::RelayDown| {
        if let Some(relay_down::Body::Offer(o)) = m.body {
            waiting.remove(&o.trade_id);
        }
    };
    note(&mut waiting, first);
    while !waiting.is_empty() {
        match tokio::time::timeout(WAIT, stream.down.message()).await.expect("the catch-up stalled") {
            Ok(Some(m)) => note(&mut waiting, m),
            Ok(None) => panic!("the stream ended with {} offers still to come", waiting.len()),
            Err(status) => panic!("the stream ended {status:?} with {} offers still to come", waiting.len()),
        }
    }
    // Caught up, the same stream still carries live offers.
    let after = shop.create_trade(request(BACKLOG + 1)).await.expect("create").into_inner().trade_id;
    loop {
        match tokio::time::timeout(WAIT, stream.down.message()).await.expect("no live offer after the catch-up") {
            Ok(Some(proto::RelayDown { body: Some(relay_down::Body::Offer(o)), .. })) if o.trade_id == after => break,
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended after the catch-up"),
            Err(status) => panic!("the stream ended {status:?} after the catch-up"),
        }
    }
}

/// A relay message that does not decode ends the stream INVALID_ARGUMENT
/// (a carrier bug, said as such rather than a silent end).
#[tokio::test]
async fn an_undecodable_uplink_message_ends_the_stream_invalid_argument() {
    let w = world().await;
    let channel = w.t.authed(&w.carrier_token).await;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    // Field 1 (ack) as a length-delimited value whose length runs past
    // the end: not a RelayUp.
    tx.send(vec![0x0a, 0x7f, 0x01]).await.expect("queued");
    let path = http::uri::PathAndQuery::from_static("/syncpay.v1.CarrierService/Relay");
    let response = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, common::raw::RawCodec)
        .await
        .expect("stream opens");
    let mut down = response.into_inner();
    let ended = loop {
        match tokio::time::timeout(WAIT, down.message()).await.expect("the stream must end") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::InvalidArgument, "{ended:?}");
    drop(tx);
}
