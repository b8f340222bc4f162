//! The settlement loop end to end: a real server, `VirtualRegister` for the
//! shop, `terminal_sim` for the carrier and handsets, and the generated
//! clients where a test needs to act as a raw carrier.

mod common;

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::world::{world, World};
use common::{code_of, TestServer};
use ed25519_dalek::{Signer, SigningKey};
use syncpay::domain::approval::ApprovalPayload;
use syncpay::domain::receipt::handset_commitment;
use syncpay::domain::{
    Amount, BindingCode, Currency, Decision, PayloadVersion, RegisterId, ScreenText, ShopId, TradeId, UnixMs,
};
use syncpay::proto::{self, FailureReason as FR, TradeState as S};
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::terminal_sim::Policy;
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

fn charge(payer: &str, amount: u64, ttl: u32) -> ChargeRequest {
    ChargeRequest { ttl_seconds: ttl, ..ChargeRequest::new(payer, amount, "JPY", "The Rust Book") }
}

fn state(t: &proto::Trade) -> (S, FR) {
    (S::try_from(t.state).unwrap_or(S::Unspecified), FR::try_from(t.failure_reason).unwrap_or(FR::Unspecified))
}

fn trade_id(t: &proto::Trade) -> TradeId {
    TradeId::parse(&t.trade_id).expect("trade id")
}

const APPROVER: &str = "+818010000001";
const DECLINER: &str = "+818010000002";
const IGNORER: &str = "+818010000003";
const CANCELLEE: &str = "+818010000004";
const FORGER: &str = "+818010000005";
const POOR: &str = "+818010000006";

#[tokio::test]
async fn every_outcome_with_balances_events_and_a_verified_ledger() {
    for backend in backends() {
        every_outcome_with_balances_events_and_a_verified_ledger_on(backend).await;
    }
}

async fn every_outcome_with_balances_events_and_a_verified_ledger_on(backend: &'static BackendFactory) {
    let w = world(
        backend,
        &[
            (APPROVER, Policy::Approve, 10_000),
            (DECLINER, Policy::Decline, 10_000),
            (IGNORER, Policy::Ignore, 10_000),
            (CANCELLEE, Policy::Ignore, 10_000),
            (FORGER, Policy::BadSignature, 10_000),
            (POOR, Policy::Approve, 500),
        ],
    )
    .await;

    let settled = w.register.charge(charge(APPROVER, 1_200, 60)).await.expect("charge");
    assert_eq!(state(&settled), (S::Settled, FR::Unspecified));
    let declined = w.register.charge(charge(DECLINER, 1_200, 60)).await.expect("charge");
    assert_eq!(state(&declined), (S::Declined, FR::Unspecified));
    let expired = w.register.charge(charge(IGNORER, 1_200, 1)).await.expect("charge");
    assert_eq!(state(&expired), (S::Expired, FR::Unspecified));
    let forged = w.register.charge(charge(FORGER, 1_200, 60)).await.expect("charge");
    assert_eq!(state(&forged), (S::Failed, FR::BadSignature));
    let poor = w.register.charge(charge(POOR, 1_200, 60)).await.expect("charge");
    assert_eq!(state(&poor), (S::Failed, FR::InsufficientFunds));

    let pending = w.register.create(charge(CANCELLEE, 1_200, 60)).await.expect("create");
    assert_eq!(state(&pending).0, S::Pending);
    w.sim.wait_for_offer(trade_id(&pending), WAIT).await.expect("offer shown");
    let cancelled = w.register.cancel(trade_id(&pending)).await.expect("cancel");
    assert_eq!(state(&cancelled), (S::Cancelled, FR::Unspecified));
    assert_eq!(w.sim.wait_for_withdraw(trade_id(&pending), WAIT).await.expect("withdraw"), S::Cancelled);
    assert_eq!(w.sim.wait_for_withdraw(trade_id(&expired), WAIT).await.expect("withdraw"), S::Expired);
    // Final means final: cancelling again is a wrong-state error.
    assert_eq!(w.register.cancel(trade_id(&pending)).await.expect_err("final").code(), Some(Code::FailedPrecondition));

    // Money moved exactly once, for the one settled trade.
    assert_eq!(w.t.balance(&format!("wallet:{APPROVER}:JPY")).await, 8_800);
    for number in [DECLINER, IGNORER, CANCELLEE, FORGER] {
        assert_eq!(w.t.balance(&format!("wallet:{number}:JPY")).await, 10_000, "{number}");
    }
    assert_eq!(w.t.balance(&format!("wallet:{POOR}:JPY")).await, 500);
    assert_eq!(w.t.balance("shop:acme:JPY").await, 1_200);
    assert_eq!(w.t.balance("system:funding:JPY").await, -50_500);
    let report = w.t.assert_ledger_ok().await;
    assert_eq!(report.trades_checked, 6);

    // The shop can prove the buyer approved exactly this trade, as shown.
    let receipt = settled.receipt.as_ref().expect("receipt with the settlement");
    let key = w.sim.handset(APPROVER).expect("handset").public_key;
    let payload = ApprovalPayload {
        trade_id: trade_id(&settled),
        amount: Amount::new(1_200),
        currency: Currency::parse("JPY").expect("jpy"),
        shop_id: ShopId::parse("acme").expect("shop"),
        register_id: w.register.id(),
        expires_at: UnixMs(u64::try_from(settled.expires_at_ms).expect("ms")),
        version: PayloadVersion::V2 {
            binding_code: BindingCode::parse(&settled.binding_code).expect("code"),
            screen_digest: ScreenText {
                shop_name: "Acme Books",
                register_label: "till 1",
                description: "The Rust Book",
            }
            .digest(),
        },
        decision: Decision::Approve,
    };
    assert_eq!(receipt.signed_payload, payload.to_bytes());
    assert!(payload.verify(&key, &receipt.signature));
    assert!(receipt.handset_key_fingerprint.is_empty(), "no per-shop fingerprint any more");
    assert_eq!(receipt.handset_commitment, handset_commitment(trade_id(&settled), &key).to_vec());
    for t in [&declined, &expired, &forged, &poor, &cancelled] {
        assert!(t.receipt.is_none(), "{} carries a receipt", t.trade_id);
    }

    // The binding code the shop shows is the one the handset showed.
    let shown: Vec<String> = w
        .sim
        .transcript()
        .into_iter()
        .filter_map(|e| match e {
            syncpay::terminal_sim::SimEvent::OfferShown { trade_id, binding_code, shop_name, .. } => {
                assert_eq!(shop_name, "Acme Books");
                (trade_id.to_string() == settled.trade_id).then_some(binding_code)
            }
            _ => None,
        })
        .collect();
    assert_eq!(shown, vec![settled.binding_code.clone()]);
    assert_eq!(settled.binding_code.len(), 6);

    // Events: ordered, gap-free, PENDING first and final last per trade.
    let mut events = w.register.watch(0).await.expect("watch");
    let mut seen = Vec::new();
    let mut finished = std::collections::HashSet::new();
    while finished.len() < 6 {
        let e = tokio::time::timeout(WAIT, events.next()).await.expect("event in time").expect("open").expect("ok");
        let trade = e.trade.as_ref().expect("trade");
        if syncpay::register::is_final(trade) {
            assert!(finished.insert(trade.trade_id.clone()), "two final events for {}", trade.trade_id);
        }
        seen.push(e);
    }
    let seqs: Vec<u64> = seen.iter().map(|e| e.sequence).collect();
    for (expected, s) in (1..).zip(seqs.iter()) {
        assert_eq!(*s, expected, "gap in {seqs:?}");
    }
    for t in [&settled, &declined, &expired, &forged, &poor, &cancelled] {
        let states: Vec<S> = seen
            .iter()
            .filter_map(|e| e.trade.as_ref())
            .filter(|x| x.trade_id == t.trade_id)
            .map(|x| S::try_from(x.state).unwrap_or(S::Unspecified))
            .collect();
        // The simulated carrier acknowledges delivery before relaying the
        // answer, and one relay stream's messages are applied in order.
        assert_eq!(states, vec![S::Pending, S::Offered, state(t).0], "{}", t.trade_id);
    }
    // No event names the payer; the pseudonym is the same for one payer.
    for e in &seen {
        let trade = e.trade.as_ref().expect("trade");
        assert!(trade.payer_pseudonym.starts_with("pyr_"));
        assert!(!format!("{e:?}").contains("+8180"), "event leaks a number: {e:?}");
    }

    // Resuming from a cursor gives exactly the rest.
    let total = seen.len();
    let cursor = seen[4].sequence;
    let mut resumed = w.register.watch(cursor).await.expect("watch");
    let rest = total - 5;
    for i in 0..rest {
        let e = tokio::time::timeout(WAIT, resumed.next()).await.expect("in time").expect("open").expect("ok");
        assert_eq!(e.sequence, seen[5 + i].sequence);
        assert_eq!(e.trade, seen[5 + i].trade);
    }
    w.sim.shutdown().await.expect("sim stop");
}

#[tokio::test]
async fn an_answer_sent_twice_settles_once() {
    for backend in backends() {
        an_answer_sent_twice_settles_once_on(backend).await;
    }
}

async fn an_answer_sent_twice_settles_once_on(backend: &'static BackendFactory) {
    let w = world(backend, &[(APPROVER, Policy::AnswerTwice, 5_000)]).await;
    let t = w.register.charge(charge(APPROVER, 1_000, 60)).await.expect("charge");
    assert_eq!(state(&t).0, S::Settled);
    let results = w.sim.wait_for_answer_results(trade_id(&t), 2, WAIT).await.expect("two results");
    // Each verdict is sent when its own answer's commit is durable; two
    // answers made durable by one group commit may have their verdicts
    // sent in either order (no order between verdicts is promised).
    let (taken, refused): (Vec<_>, Vec<_>) = results.iter().partition(|r| r.accepted);
    assert_eq!((taken.len(), refused.len()), (1, 1), "{results:?}");
    assert!(refused[0].message.contains("already SETTLED"), "{}", refused[0].message);
    assert_eq!(w.t.balance(&format!("wallet:{APPROVER}:JPY")).await, 4_000);
    w.t.assert_ledger_ok().await;
}

#[tokio::test]
async fn a_late_approval_changes_nothing_and_is_told_why() {
    for backend in backends() {
        a_late_approval_changes_nothing_and_is_told_why_on(backend).await;
    }
}

async fn a_late_approval_changes_nothing_and_is_told_why_on(backend: &'static BackendFactory) {
    let w = world(backend, &[(APPROVER, Policy::ApproveAfter(Duration::from_millis(2_500)), 5_000)]).await;
    let t = w.register.charge(charge(APPROVER, 1_000, 1)).await.expect("charge");
    assert_eq!(state(&t).0, S::Expired);
    let result = w.sim.wait_for_answer_result(trade_id(&t), WAIT).await.expect("answer result");
    assert!(!result.accepted);
    assert_eq!(result.state, S::Expired);
    assert_eq!(w.t.balance(&format!("wallet:{APPROVER}:JPY")).await, 5_000);
    w.t.assert_ledger_ok().await;
}

/// Acts as a raw carrier with the generated client: enrolls a key it
/// holds, lets a trade be created while no relay is connected, then
/// connects and must receive the queued offer.
#[tokio::test]
async fn offers_wait_for_an_offline_carrier_and_arrive_when_it_connects() {
    for backend in backends() {
        offers_wait_for_an_offline_carrier_and_arrive_when_it_connects_on(backend).await;
    }
}

async fn offers_wait_for_an_offline_carrier_and_arrive_when_it_connects_on(backend: &'static BackendFactory) {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let mut carrier = t.carrier(&carrier_token).await;
    let key = SigningKey::from_bytes(&[7u8; 32]);
    common::enroll_with_key(&mut carrier, APPROVER, &key).await;
    t.top_up(APPROVER, 3_000, "JPY").await;
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("register");
    let created = register.create(charge(APPROVER, 700, 60)).await.expect("create");

    // Now the carrier connects and gets the offer from the outbox.
    let (up_tx, up_rx) = tokio::sync::mpsc::channel(16);
    let mut down = carrier.relay(tokio_stream::wrappers::ReceiverStream::new(up_rx)).await.expect("relay").into_inner();
    let first = tokio::time::timeout(WAIT, down.next()).await.expect("in time").expect("open").expect("ok");
    let Some(proto::relay_down::Body::Offer(offer)) = first.body else { panic!("expected an offer: {first:?}") };
    assert_eq!(offer.trade_id, created.trade_id);
    assert_eq!(offer.subscriber_number, APPROVER);
    assert_eq!(offer.shop_name, "Acme Books");
    assert_eq!(offer.register_label, "till");
    assert_eq!(offer.binding_code, created.binding_code);
    assert_ne!(first.delivery_id, 0);
    let send = |body| proto::RelayUp { body: Some(body) };
    up_tx.send(send(proto::relay_up::Body::Ack(proto::Ack { delivery_id: first.delivery_id }))).await.expect("ack");
    // The ack is processed asynchronously; OFFERED shows in the stream.
    let mut events = register.watch(0).await.expect("watch");
    let e1 = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
    let e2 = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
    assert_eq!(state(e1.trade.as_ref().expect("trade")).0, S::Pending);
    assert_eq!(state(e2.trade.as_ref().expect("trade")).0, S::Offered);

    // The offer carries the exact bytes to sign, and they are the bytes its
    // fields give.
    assert_eq!(offer.payload_version, 2);
    let payload = ApprovalPayload {
        trade_id: TradeId::parse(&offer.trade_id).expect("id"),
        amount: Amount::new(offer.amount_minor),
        currency: Currency::parse(&offer.currency).expect("currency"),
        shop_id: ShopId::parse(&offer.shop_id).expect("shop"),
        register_id: RegisterId::parse(&offer.register_id).expect("register"),
        expires_at: UnixMs(u64::try_from(offer.expires_at_ms).expect("ms")),
        version: PayloadVersion::V2 {
            binding_code: BindingCode::parse(&offer.binding_code).expect("code"),
            screen_digest: ScreenText { shop_name: "Acme Books", register_label: "till", description: "The Rust Book" }
                .digest(),
        },
        decision: Decision::Approve,
    };
    assert_eq!(offer.approve_payload, payload.to_bytes());
    assert_eq!(offer.decline_payload, ApprovalPayload { decision: Decision::Decline, ..payload.clone() }.to_bytes());
    let signature = key.sign(&offer.approve_payload).to_bytes().to_vec();
    up_tx
        .send(send(proto::relay_up::Body::Answer(proto::HandsetAnswer {
            trade_id: offer.trade_id.clone(),
            decision: proto::Decision::Approve as i32,
            signature,
        })))
        .await
        .expect("answer");
    let result = tokio::time::timeout(WAIT, down.next()).await.expect("in time").expect("open").expect("ok");
    let Some(proto::relay_down::Body::AnswerResult(r)) = result.body else { panic!("expected a result: {result:?}") };
    assert!(r.accepted);
    assert_eq!(r.state, S::Settled as i32);
    let done = register.await_final(trade_id(&created), WAIT).await.expect("final");
    assert_eq!(state(&done).0, S::Settled);
    assert_eq!(t.balance(&format!("wallet:{APPROVER}:JPY")).await, 2_300);
    t.assert_ledger_ok().await;
}

#[tokio::test]
async fn acknowledged_state_survives_a_restart_and_open_trades_still_expire() {
    for backend in backends() {
        acknowledged_state_survives_a_restart_and_open_trades_still_expire_on(backend).await;
    }
}

async fn acknowledged_state_survives_a_restart_and_open_trades_still_expire_on(backend: &'static BackendFactory) {
    let w = world(backend, &[(APPROVER, Policy::Approve, 5_000), (IGNORER, Policy::Ignore, 5_000)]).await;
    let settled = w.register.charge(charge(APPROVER, 1_000, 60)).await.expect("charge");
    let open = w.register.create(charge(IGNORER, 1_000, 2)).await.expect("create");
    let register_id = w.register.id();
    let World { t, shop_token, sim, .. } = w;
    sim.shutdown().await.expect("sim stop");
    let t = t.restart().await;

    let register = VirtualRegister::attach(t.channel().await, &shop_token, register_id).await.expect("attach");
    assert_eq!(state(&register.get(trade_id(&settled)).await.expect("get")).0, S::Settled);
    let expired = register.await_final(trade_id(&open), WAIT).await.expect("expires after restart");
    assert_eq!(state(&expired).0, S::Expired);
    assert_eq!(t.balance(&format!("wallet:{APPROVER}:JPY")).await, 4_000);
    assert_eq!(t.balance(&format!("wallet:{IGNORER}:JPY")).await, 5_000);
    // The event log continues after the restart without a gap.
    let mut events = register.watch(0).await.expect("watch");
    let mut last = 0;
    loop {
        let e = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
        assert_eq!(e.sequence, last + 1);
        last = e.sequence;
        if e.trade.as_ref().is_some_and(|x| x.trade_id == open.trade_id && x.state == S::Expired as i32) {
            break;
        }
    }
    t.assert_ledger_ok().await;
}

#[tokio::test]
async fn one_shop_cannot_touch_another_shops_trades() {
    for backend in backends() {
        one_shop_cannot_touch_another_shops_trades_on(backend).await;
    }
}

async fn one_shop_cannot_touch_another_shops_trades_on(backend: &'static BackendFactory) {
    let w = world(backend, &[(IGNORER, Policy::Ignore, 0)]).await;
    let theirs = w.register.create(charge(IGNORER, 100, 60)).await.expect("create");
    let other_token = w.t.create_shop("mallory", "Mallory Mart").await;
    let mut other = w.t.shop(&other_token).await;
    let id = theirs.trade_id.clone();
    assert_eq!(code_of(other.get_trade(proto::GetTradeRequest { trade_id: id.clone() }).await), Code::NotFound);
    assert_eq!(
        code_of(other.await_trade(proto::AwaitTradeRequest { trade_id: id.clone(), wait_ms: 10 }).await),
        Code::NotFound
    );
    assert_eq!(code_of(other.cancel_trade(proto::CancelTradeRequest { trade_id: id.clone() }).await), Code::NotFound);
    // The same answer as for a trade that does not exist at all.
    let unknown = TradeId::generate().expect("id").to_string();
    let a = other.get_trade(proto::GetTradeRequest { trade_id: id }).await.expect_err("not found");
    let b = other.get_trade(proto::GetTradeRequest { trade_id: unknown }).await.expect_err("not found");
    assert_eq!((a.code(), a.message()), (b.code(), b.message()));
    // Its registers are not visible either, and its event stream is empty.
    let listed = other.list_registers(proto::ListRegistersRequest {}).await.expect("list").into_inner();
    assert!(listed.registers.is_empty());
}

#[tokio::test]
async fn registers_open_close_and_refuse_trades_when_closed() {
    for backend in backends() {
        registers_open_close_and_refuse_trades_when_closed_on(backend).await;
    }
}

async fn registers_open_close_and_refuse_trades_when_closed_on(backend: &'static BackendFactory) {
    let w = world(backend, &[(IGNORER, Policy::Ignore, 0)]).await;
    let mut shop = w.t.shop(&w.shop_token).await;
    let open = w.register.create(charge(IGNORER, 100, 60)).await.expect("create");
    let close = proto::CloseRegisterRequest { register_id: w.register.id().to_string() };
    let busy = shop.close_register(close.clone()).await.expect_err("open trades");
    assert_eq!(busy.code(), Code::FailedPrecondition);
    w.register.cancel(trade_id(&open)).await.expect("cancel");
    let closed = shop.close_register(close.clone()).await.expect("close").into_inner();
    assert!(!closed.open);
    let refused = w.register.create(charge(IGNORER, 100, 60)).await.expect_err("closed");
    assert_eq!(refused.code(), Some(Code::FailedPrecondition));
    let listed = shop.list_registers(proto::ListRegistersRequest {}).await.expect("list").into_inner();
    assert_eq!(listed.registers.len(), 1);
    assert!(!listed.registers[0].open);
}

#[tokio::test]
async fn a_burst_of_acks_and_answers_on_one_stream_applies_in_arrival_order() {
    for backend in backends() {
        a_burst_of_acks_and_answers_on_one_stream_applies_in_arrival_order_on(backend).await;
    }
}

/// A raw carrier sends every acknowledgement and answer for 16 trades in
/// one burst, so the server reads them together (their signatures are
/// checked on both cores): each message still takes effect in arrival
/// order. Per trade, in this order: the offer's ack, then
/// - a valid approval (settles);
/// - a valid decline, then a valid approval (declined; the approval is
///   refused as already DECLINED);
/// - a forged approval, then a valid one (failed, bad signature; the valid
///   one is refused as already FAILED);
/// - a valid approval, then a malformed answer (settles; the malformed one
///   is answered with the field it got wrong).
async fn a_burst_of_acks_and_answers_on_one_stream_applies_in_arrival_order_on(backend: &'static BackendFactory) {
    use common::manual_carrier::{sign, ManualCarrier};
    const N: u8 = 16;
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let mut carrier = t.carrier(&carrier_token).await;
    let numbers: Vec<String> = (0..N).map(|i| format!("+8180200000{i:02}")).collect();
    let keys: Vec<SigningKey> = (0..N).map(|i| SigningKey::from_bytes(&[40 + i; 32])).collect();
    for (number, key) in numbers.iter().zip(&keys) {
        common::enroll_with_key(&mut carrier, number, key).await;
        t.top_up(number, 5_000, "JPY").await;
    }
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("register");
    let mut trades = Vec::new();
    for number in &numbers {
        trades.push(register.create(charge(number, 1_000, 60)).await.expect("create"));
    }
    let mut relay = ManualCarrier::connect(carrier.clone()).await;
    let mut offers = Vec::new();
    for t in &trades {
        offers.push(relay.offer(&t.trade_id).await);
    }
    let forger = SigningKey::from_bytes(&[99; 32]);
    let mut burst = Vec::new();
    let answer = |trade: &str, decision: Decision, signature: Vec<u8>| {
        let decision = match decision {
            Decision::Approve => proto::Decision::Approve,
            Decision::Decline => proto::Decision::Decline,
        };
        proto::RelayUp {
            body: Some(proto::relay_up::Body::Answer(proto::HandsetAnswer {
                trade_id: trade.to_owned(),
                decision: decision as i32,
                signature,
            })),
        }
    };
    for (i, ((delivery, offer), key)) in offers.iter().zip(&keys).enumerate() {
        let id = offer.trade_id.as_str();
        burst.push(proto::RelayUp { body: Some(proto::relay_up::Body::Ack(proto::Ack { delivery_id: *delivery })) });
        let approve = answer(id, Decision::Approve, sign(key, offer, Decision::Approve));
        match i % 4 {
            0 => burst.push(approve),
            1 => burst.extend([answer(id, Decision::Decline, sign(key, offer, Decision::Decline)), approve]),
            2 => burst.extend([answer(id, Decision::Approve, sign(&forger, offer, Decision::Approve)), approve]),
            _ => burst.extend([approve, answer("not-a-trade-id", Decision::Approve, vec![0; 64])]),
        }
    }
    for message in burst {
        relay.send_message(message).await;
    }

    // Every answer gets its verdict (two answers' verdicts may come in
    // either order); the malformed one's names its field.
    let results_expected = 16 + 12;
    let mut results: Vec<proto::AnswerResult> = Vec::new();
    while results.len() < results_expected {
        let r = relay
            .find(|m| match &m.body {
                Some(proto::relay_down::Body::AnswerResult(r)) => Some(r.clone()),
                _ => None,
            })
            .await
            .expect("answer result");
        results.push(r);
    }
    let malformed: Vec<_> = results.iter().filter(|r| r.trade_id == "not-a-trade-id").collect();
    assert_eq!(malformed.len(), 4, "{results:?}");
    assert!(malformed.iter().all(|r| !r.accepted && r.message.contains("answer.trade_id")), "{malformed:?}");
    for (i, trade) in trades.iter().enumerate() {
        let mine: Vec<_> = results.iter().filter(|r| r.trade_id == trade.trade_id).collect();
        let (final_state, refused) = match i % 4 {
            0 | 3 => (S::Settled, None),
            1 => (S::Declined, Some("already DECLINED")),
            _ => (S::Failed, Some("already FAILED")),
        };
        let taken: Vec<_> = mine.iter().filter(|r| r.accepted).collect();
        assert_eq!(taken.len(), 1, "trade {i}: {mine:?}");
        assert_eq!(taken[0].state, final_state as i32, "trade {i}: {mine:?}");
        match refused {
            None => assert_eq!(mine.len(), 1, "trade {i}: {mine:?}"),
            Some(why) => {
                assert_eq!(mine.len(), 2, "trade {i}: {mine:?}");
                let no = mine.iter().find(|r| !r.accepted).expect("refused");
                assert!(no.message.contains(why), "trade {i}: {no:?}");
            }
        }
        let done = register.await_final(trade_id(trade), WAIT).await.expect("final");
        assert_eq!(state(&done).0, final_state, "trade {i}");
        if final_state == S::Failed {
            assert_eq!(state(&done).1, FR::BadSignature, "trade {i}");
        }
    }

    // Each ack took effect before its trade's answer: every trade went
    // PENDING, OFFERED, then final, in its shop's event stream.
    let mut events = register.watch(0).await.expect("watch");
    // And their times follow that order: a message is stamped when its
    // batch arrived, not when its check finished.
    let mut seen: std::collections::HashMap<String, Vec<(S, i64)>> = std::collections::HashMap::new();
    while seen.values().map(Vec::len).sum::<usize>() < 3 * usize::from(N) {
        let e = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
        let trade = e.trade.expect("trade");
        seen.entry(trade.trade_id.clone()).or_default().push((state(&trade).0, e.at_ms));
    }
    for (i, trade) in trades.iter().enumerate() {
        let final_state = [S::Settled, S::Declined, S::Failed, S::Settled][i % 4];
        let mine = seen.get(&trade.trade_id).expect("events");
        assert_eq!(mine.iter().map(|e| e.0).collect::<Vec<_>>(), [S::Pending, S::Offered, final_state], "trade {i}");
        assert!(mine.windows(2).all(|w| w[0].1 <= w[1].1), "trade {i}: {mine:?}");
    }
    for (i, number) in numbers.iter().enumerate() {
        let paid = if i % 4 == 0 || i % 4 == 3 { 1_000 } else { 0 };
        assert_eq!(t.balance(&format!("wallet:{number}:JPY")).await, 5_000 - paid, "{number}");
    }
    t.assert_ledger_ok().await;
}
