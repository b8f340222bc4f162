//! Isolation between parties, over mutual TLS: a shop cannot see or touch
//! another shop's trades or registers on any RPC (NOT_FOUND, word for word
//! the answer for a trade that does not exist); a carrier acts only for its
//! own subscribers; and an approval settles only with the signature, by the
//! payer's enrolled key, over exactly this trade.

mod common;

use common::refusal;

use common::backends::{backends, BackendFactory};
use common::manual_carrier::{payload_bytes, sign, ManualCarrier};
use common::{functional_limits, TestServer};
use ed25519_dalek::{Signer, SigningKey};
use syncpay::domain::{Decision, RegisterId, TradeId};
use syncpay::proto::{self, FailureReason, TradeState};
use tokio_stream::StreamExt;
use tonic::Code;

const PAYER: &str = "+818011110001";
const OTHER_PAYER: &str = "+818011110002";

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn trade_request(register_id: &str, payer: &str, amount: u64) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register_id.into(),
        amount_minor: amount,
        currency: "JPY".into(),
        description: "tea".into(),
        ttl_seconds: 60,
        idempotency_key: String::new(),
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(payer.into())),
    }
}

/// Shops `acme` and `bobs`, carriers `docomo` (with both payers, their
/// handsets keyed 1 and 2, each wallet topped up) and `kddi`.
async fn world(backend: &'static BackendFactory) -> TestServer {
    let t = TestServer::start_tls_on(backend, &["acme", "bobs"], &["docomo", "kddi"], functional_limits()).await;
    let mut docomo = t.as_carrier("docomo").await;
    for (number, seed) in [(PAYER, 1u8), (OTHER_PAYER, 2u8)] {
        common::enroll_with_key(&mut docomo, number, &key(seed)).await;
        t.top_up(number, 100_000, "JPY").await;
    }
    t
}

/// The code and message of a failed call.
#[tokio::test]
async fn another_shops_trades_and_registers_are_not_found_on_every_rpc() {
    for backend in backends() {
        another_shops_trades_and_registers_are_not_found_on_every_rpc_on(backend).await;
    }
}

async fn another_shops_trades_and_registers_are_not_found_on_every_rpc_on(backend: &'static BackendFactory) {
    let t = world(backend).await;
    let mut relay = ManualCarrier::connect(t.as_carrier("docomo").await).await;
    let reg_a = t.open_register_as("acme").await;
    let mut a = t.as_shop("acme").await;
    let mut b = t.as_shop("bobs").await;

    // Shop A: one open trade and one settled trade.
    let open = a.create_trade(trade_request(&reg_a, PAYER, 500)).await.expect("create").into_inner();
    let settled = a.create_trade(trade_request(&reg_a, PAYER, 700)).await.expect("create").into_inner();
    let (_, offer) = relay.offer(&settled.trade_id).await;
    relay.answer(&settled.trade_id, Decision::Approve, sign(&key(1), &offer, Decision::Approve)).await;
    assert!(relay.answer_result(&settled.trade_id).await.accepted);

    // What shop B is told about a trade id that exists nowhere.
    let nowhere = TradeId::generate().expect("id").to_string();
    let get_none = refusal(b.get_trade(proto::GetTradeRequest { trade_id: nowhere.clone() }).await);
    assert_eq!(get_none.0, Code::NotFound);
    let await_none = refusal(b.await_trade(proto::AwaitTradeRequest { trade_id: nowhere.clone(), wait_ms: 10 }).await);
    let cancel_none = refusal(b.cancel_trade(proto::CancelTradeRequest { trade_id: nowhere.clone() }).await);
    let refund = |trade_id: &str, key: &str| proto::RefundTradeRequest {
        trade_id: trade_id.into(),
        amount_minor: 1,
        idempotency_key: key.into(),
    };
    let refund_none = refusal(b.refund_trade(refund(&nowhere, "")).await);
    let refund_key_none = refusal(b.refund_trade(refund(&nowhere, "k-1")).await);

    for trade in [&open.trade_id, &settled.trade_id] {
        let id = trade.clone();
        assert_eq!(refusal(b.get_trade(proto::GetTradeRequest { trade_id: id.clone() }).await), get_none);
        assert_eq!(
            refusal(b.await_trade(proto::AwaitTradeRequest { trade_id: id.clone(), wait_ms: 10 }).await),
            await_none
        );
        assert_eq!(refusal(b.cancel_trade(proto::CancelTradeRequest { trade_id: id.clone() }).await), cancel_none);
        assert_eq!(refusal(b.refund_trade(refund(&id, "")).await), refund_none);
        assert_eq!(refusal(b.refund_trade(refund(&id, "k-2")).await), refund_key_none);
    }
    for (code, _) in [&get_none, &await_none, &cancel_none, &refund_none, &refund_key_none] {
        assert_eq!(*code, Code::NotFound);
    }

    // Shop A's register: as unknown to B as a register that never existed.
    let no_register = RegisterId::generate().expect("id").to_string();
    let close = |id: &str| proto::CloseRegisterRequest { register_id: id.into() };
    assert_eq!(refusal(b.close_register(close(&reg_a)).await), refusal(b.close_register(close(&no_register)).await));
    assert_eq!(refusal(b.close_register(close(&reg_a)).await).0, Code::NotFound);
    assert_eq!(
        refusal(b.create_trade(trade_request(&reg_a, PAYER, 100)).await),
        refusal(b.create_trade(trade_request(&no_register, PAYER, 100)).await)
    );
    assert_eq!(refusal(b.create_trade(trade_request(&reg_a, PAYER, 100)).await).0, Code::NotFound);
    let watch = |id: &str| proto::WatchTradesRequest { after_sequence: 0, register_id: id.into() };
    let watch_a = refusal(b.watch_trades(watch(&reg_a)).await);
    assert_eq!(watch_a.0, Code::NotFound);
    assert_eq!(watch_a, refusal(b.watch_trades(watch(&no_register)).await));
    let listed = b.list_registers(proto::ListRegistersRequest {}).await.expect("list").into_inner();
    assert!(listed.registers.is_empty(), "{listed:?}");

    // B's own event stream carries only B's trades.
    let reg_b = t.open_register_as("bobs").await;
    let own = b.create_trade(trade_request(&reg_b, OTHER_PAYER, 300)).await.expect("create").into_inner();
    let mut events = b.watch_trades(watch("")).await.expect("watch").into_inner();
    let first = events.next().await.expect("event").expect("ok");
    assert_eq!(first.sequence, 1);
    assert_eq!(first.trade.expect("trade").trade_id, own.trade_id);

    // Nothing B tried changed A's trades.
    let still_open = a.get_trade(proto::GetTradeRequest { trade_id: open.trade_id.clone() }).await.expect("get");
    assert_eq!(still_open.into_inner().state, TradeState::Pending as i32);
    let still_settled = a.get_trade(proto::GetTradeRequest { trade_id: settled.trade_id.clone() }).await.expect("get");
    let still_settled = still_settled.into_inner();
    assert_eq!((still_settled.state, still_settled.refunded_minor), (TradeState::Settled as i32, 0));
    t.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_carrier_acts_only_for_its_own_subscribers() {
    for backend in backends() {
        a_carrier_acts_only_for_its_own_subscribers_on(backend).await;
    }
}

async fn a_carrier_acts_only_for_its_own_subscribers_on(backend: &'static BackendFactory) {
    let t = world(backend).await;
    let mut docomo = ManualCarrier::connect(t.as_carrier("docomo").await).await;
    let mut kddi = ManualCarrier::connect(t.as_carrier("kddi").await).await;
    let mut kddi_api = t.as_carrier("kddi").await;
    let reg = t.open_register_as("acme").await;
    let mut shop = t.as_shop("acme").await;

    // Enrolling a handset for another carrier's subscriber is NOT_FOUND,
    // like a number nobody enrolled.
    let handset = |number: &str| proto::EnrollHandsetRequest {
        subscriber_number: number.into(),
        public_key: key(9).verifying_key().to_bytes().to_vec(),
    };
    let theirs = refusal(kddi_api.enroll_handset(handset(PAYER)).await);
    assert_eq!(theirs.0, Code::NotFound);
    assert_eq!(theirs, refusal(kddi_api.enroll_handset(handset("+818099990000")).await));
    // Claiming the subscriber is refused (the number stays with docomo).
    let claim = proto::EnrollSubscriberRequest {
        subscriber_number: PAYER.into(),
        funding: proto::Funding::Wallet as i32,
        ..Default::default()
    };
    assert_eq!(refusal(kddi_api.enroll_subscriber(claim).await).0, Code::FailedPrecondition);

    let trade = shop.create_trade(trade_request(&reg, PAYER, 900)).await.expect("create").into_inner();
    let (delivery, offer) = docomo.offer(&trade.trade_id).await;

    // kddi acknowledges docomo's delivery and answers docomo's trade with
    // a signature by the right key: an unknown trade to kddi; nothing moves.
    kddi.ack(delivery).await;
    kddi.answer(&trade.trade_id, Decision::Approve, sign(&key(1), &offer, Decision::Approve)).await;
    let result = kddi.answer_result(&trade.trade_id).await;
    assert!(!result.accepted);
    assert_eq!(result.message, "no such trade for this carrier");
    assert_eq!(result.state, TradeState::Unspecified as i32, "the refusal must not reveal the trade's state");
    let now = shop.get_trade(proto::GetTradeRequest { trade_id: trade.trade_id.clone() }).await.expect("get");
    assert_eq!(now.into_inner().state, TradeState::Pending as i32, "kddi's ack moved docomo's trade");
    assert!(kddi.drain().iter().all(|m| !matches!(m.body, Some(proto::relay_down::Body::Offer(_)))));

    // The rightful carrier still settles it.
    docomo.ack(delivery).await;
    docomo.answer(&trade.trade_id, Decision::Approve, sign(&key(1), &offer, Decision::Approve)).await;
    let result = docomo.answer_result(&trade.trade_id).await;
    assert!(result.accepted, "{result:?}");
    assert_eq!(result.state, TradeState::Settled as i32);
    t.assert_ledger_ok().await;
}

#[tokio::test]
async fn forged_replayed_wrong_key_and_wrong_amount_approvals_never_settle() {
    for backend in backends() {
        forged_replayed_wrong_key_and_wrong_amount_approvals_never_settle_on(backend).await;
    }
}

async fn forged_replayed_wrong_key_and_wrong_amount_approvals_never_settle_on(backend: &'static BackendFactory) {
    let t = world(backend).await;
    let mut relay = ManualCarrier::connect(t.as_carrier("docomo").await).await;
    let reg = t.open_register_as("acme").await;
    let mut shop = t.as_shop("acme").await;
    let wallet = t.balance(&format!("wallet:{PAYER}:JPY")).await;

    // One honest settlement, whose approval is replayed below.
    let honest = shop.create_trade(trade_request(&reg, PAYER, 1000)).await.expect("create").into_inner();
    let (_, honest_offer) = relay.offer(&honest.trade_id).await;
    let honest_signature = sign(&key(1), &honest_offer, Decision::Approve);
    relay.answer(&honest.trade_id, Decision::Approve, honest_signature.clone()).await;
    assert_eq!(relay.answer_result(&honest.trade_id).await.state, TradeState::Settled as i32);

    type Forge = fn(&proto::Offer, &[u8]) -> (Decision, Vec<u8>);
    let cases: [(&str, Forge); 6] = [
        ("a key nobody enrolled", |o, _| (Decision::Approve, sign(&key(7), o, Decision::Approve))),
        ("another enrolled handset's valid key", |o, _| (Decision::Approve, sign(&key(2), o, Decision::Approve))),
        ("the approval of another trade, replayed", |_, honest| (Decision::Approve, honest.to_vec())),
        ("a signature over a different amount", |o, _| {
            let bytes = payload_bytes(o, Decision::Approve, o.amount_minor + 1);
            (Decision::Approve, key(1).sign(&bytes).to_bytes().to_vec())
        }),
        ("a decline signature sent as an approval", |o, _| (Decision::Approve, sign(&key(1), o, Decision::Decline))),
        ("64 zero bytes", |_, _| (Decision::Approve, vec![0u8; 64])),
    ];
    for (what, forge) in cases {
        let trade = shop.create_trade(trade_request(&reg, PAYER, 1000)).await.expect("create").into_inner();
        let (_, offer) = relay.offer(&trade.trade_id).await;
        let (decision, signature) = forge(&offer, &honest_signature);
        relay.answer(&trade.trade_id, decision, signature).await;
        let result = relay.answer_result(&trade.trade_id).await;
        assert_eq!(result.state, TradeState::Failed as i32, "{what}: {result:?}");
        assert_eq!(result.failure_reason, FailureReason::BadSignature as i32, "{what}");
        // And a correct approval after it changes nothing: final is final.
        relay.answer(&trade.trade_id, Decision::Approve, sign(&key(1), &offer, Decision::Approve)).await;
        let late = relay.answer_result(&trade.trade_id).await;
        assert!(!late.accepted, "{what}: {late:?}");
        let seen = shop.get_trade(proto::GetTradeRequest { trade_id: trade.trade_id }).await.expect("get").into_inner();
        assert_eq!(seen.state, TradeState::Failed as i32, "{what}");
        assert!(seen.receipt.is_none(), "{what}");
    }

    // The honest approval replayed for its own trade settles nothing twice.
    relay.answer(&honest.trade_id, Decision::Approve, honest_signature).await;
    assert!(!relay.answer_result(&honest.trade_id).await.accepted);

    // A malformed signature is refused at the edge, naming the field, and
    // leaves the trade open for the real answer.
    let trade = shop.create_trade(trade_request(&reg, PAYER, 1000)).await.expect("create").into_inner();
    let (_, offer) = relay.offer(&trade.trade_id).await;
    relay.answer(&trade.trade_id, Decision::Approve, vec![1u8; 63]).await;
    let refused = relay.answer_result(&trade.trade_id).await;
    assert!(!refused.accepted);
    assert!(refused.message.starts_with("answer.signature: must be 64 bytes"), "{}", refused.message);
    relay.answer(&trade.trade_id, Decision::Approve, sign(&key(1), &offer, Decision::Approve)).await;
    assert_eq!(relay.answer_result(&trade.trade_id).await.state, TradeState::Settled as i32);

    // Exactly the two honest settlements moved money.
    assert_eq!(t.balance(&format!("wallet:{PAYER}:JPY")).await, wallet - 2000);
    assert_eq!(t.balance("shop:acme:JPY").await, 2000);
    t.assert_ledger_ok().await;
}
