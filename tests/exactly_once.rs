//! Nothing twice: idempotent CreateTrade and RefundTrade over gRPC (also
//! across a restart), refunds bounded by the settled amount and visible in
//! trades and events.

mod common;

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::TestServer;
use syncpay::domain::TradeId;
use syncpay::proto::{self, EventKind, TradeState as S};
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::terminal_sim::{CarrierSim, Policy};
use tokio_stream::StreamExt;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);
const PAYER: &str = "+818020000001";

fn id(t: &proto::Trade) -> TradeId {
    TradeId::parse(&t.trade_id).expect("trade id")
}

#[tokio::test]
async fn create_trade_retries_return_the_original_even_after_a_restart() {
    for backend in backends() {
        create_trade_retries_return_the_original_even_after_a_restart_on(backend).await;
    }
}

async fn create_trade_retries_return_the_original_even_after_a_restart_on(backend: &'static BackendFactory) {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme").await;
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("open");
    let request = ChargeRequest {
        idempotency_key: Some("order-42".into()),
        ttl_seconds: 60,
        ..ChargeRequest::new(PAYER, 900, "JPY", "socks")
    };
    let first = register.create(request.clone()).await.expect("create");
    let again = register.create(request.clone()).await.expect("retry");
    assert_eq!(again.trade_id, first.trade_id);
    assert_eq!(again.binding_code, first.binding_code);

    let check_conflict = |req: ChargeRequest, field: &'static str| {
        let register = register.clone();
        async move {
            let e = register.create(req).await.expect_err("conflict");
            assert_eq!(e.code(), Some(Code::AlreadyExists), "{e:?}");
            assert!(e.to_string().contains(field), "{field}: {e}");
        }
    };
    check_conflict(ChargeRequest { amount_minor: 901, ..request.clone() }, "amount_minor").await;
    check_conflict(ChargeRequest { currency: "USD".into(), ..request.clone() }, "currency").await;
    check_conflict(ChargeRequest { description: "shoes".into(), ..request.clone() }, "description").await;
    check_conflict(ChargeRequest { payer: "+818020000002".into(), ..request.clone() }, "subscriber_number").await;
    check_conflict(ChargeRequest { ttl_seconds: 61, ..request.clone() }, "ttl_seconds").await;

    // Keys are per shop: another shop may use the same key freely.
    let other_token = t.create_shop("other", "Other").await;
    let other = VirtualRegister::open(t.channel().await, &other_token, "till").await.expect("open");
    let theirs = other.create(request.clone()).await.expect("create");
    assert_ne!(theirs.trade_id, first.trade_id);

    let register_id = register.id();
    let t = t.restart().await;
    let register = VirtualRegister::attach(t.channel().await, &shop_token, register_id).await.expect("attach");
    let after = register.create(request).await.expect("retry after restart");
    assert_eq!(after.trade_id, first.trade_id);
}

#[tokio::test]
async fn refunds_are_bounded_idempotent_and_visible() {
    for backend in backends() {
        refunds_are_bounded_idempotent_and_visible_on(backend).await;
    }
}

async fn refunds_are_bounded_idempotent_and_visible_on(backend: &'static BackendFactory) {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    sim.add_handset(PAYER, Policy::Approve).await.expect("handset");
    sim.wait_connected(WAIT).await.expect("connected");
    t.top_up(PAYER, 10_000, "JPY").await;
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till").await.expect("open");
    let settled = register
        .charge(ChargeRequest { ttl_seconds: 60, ..ChargeRequest::new(PAYER, 3_000, "JPY", "coat") })
        .await
        .expect("charge");
    assert_eq!(settled.state, S::Settled as i32);

    let r1 = register.refund(id(&settled), 1_000, Some("rf-1")).await.expect("refund");
    assert_eq!(r1.trade.as_ref().map(|x| x.refunded_minor), Some(1_000));
    let retry = register.refund(id(&settled), 1_000, Some("rf-1")).await.expect("retry");
    assert_eq!(retry.refund_id, r1.refund_id);
    assert_eq!(retry.trade.as_ref().map(|x| x.refunded_minor), Some(1_000));
    let conflict = register.refund(id(&settled), 999, Some("rf-1")).await.expect_err("conflict");
    assert_eq!(conflict.code(), Some(Code::AlreadyExists));
    assert!(conflict.to_string().contains("amount_minor"), "{conflict}");

    let too_much = register.refund(id(&settled), 2_001, None).await.expect_err("over");
    assert_eq!(too_much.code(), Some(Code::FailedPrecondition));
    assert!(too_much.to_string().contains("at most 2000"), "{too_much}");
    let zero = register.refund(id(&settled), 0, None).await.expect_err("zero");
    assert_eq!(zero.code(), Some(Code::InvalidArgument));
    let r2 = register.refund(id(&settled), 2_000, None).await.expect("the rest");
    assert_eq!(
        register.refund(id(&settled), 1, None).await.expect_err("nothing left").code(),
        Some(Code::FailedPrecondition)
    );

    // Only settled trades, and only the shop's own.
    let open = register
        .create(ChargeRequest { ttl_seconds: 60, ..ChargeRequest::new("+818020000009", 10, "JPY", "x") })
        .await
        .expect("create");
    assert_eq!(
        register.refund(id(&open), 1, None).await.expect_err("not settled").code(),
        Some(Code::FailedPrecondition)
    );
    let other_token = t.create_shop("mallory", "Mallory").await;
    let mut other = t.shop(&other_token).await;
    let status = other
        .refund_trade(proto::RefundTradeRequest {
            trade_id: settled.trade_id.clone(),
            amount_minor: 1,
            idempotency_key: String::new(),
        })
        .await
        .expect_err("not theirs");
    assert_eq!(status.code(), Code::NotFound);

    assert_eq!(t.balance(&format!("wallet:{PAYER}:JPY")).await, 10_000);
    assert_eq!(t.balance("shop:acme:JPY").await, 0);
    t.assert_ledger_ok().await;

    // The stream shows the refunds after the settlement.
    let mut events = register.watch(0).await.expect("watch");
    let mut refunds = Vec::new();
    while refunds.len() < 2 {
        let e = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
        if e.kind == EventKind::Refunded as i32 {
            refunds.push((e.refund_minor, e.trade.map(|x| x.refunded_minor)));
        }
    }
    assert_eq!(refunds, vec![(1_000, Some(1_000)), (2_000, Some(3_000))]);

    // A refund id names the refund's posting set (both of its postings),
    // in the answer, its replay and the event alike.
    let postings = t
        .admin()
        .await
        .list_postings(proto::ListPostingsRequest { after_posting_id: 0, limit: 1000 })
        .await
        .expect("postings")
        .into_inner()
        .postings;
    let mut refund_sets: Vec<u64> = postings.iter().filter(|p| p.kind == "REFUND").map(|p| p.set_id).collect();
    assert_eq!(refund_sets.len(), 4, "two postings per refund");
    refund_sets.dedup();
    assert_eq!(refund_sets, vec![r1.refund_id, r2.refund_id]);
    let mut events = register.watch(0).await.expect("watch");
    let mut event_ids = Vec::new();
    while event_ids.len() < 2 {
        let e = tokio::time::timeout(WAIT, events.next()).await.expect("in time").expect("open").expect("ok");
        if e.kind == EventKind::Refunded as i32 {
            event_ids.push(e.refund_id);
        }
    }
    assert_eq!(event_ids, refund_sets);
    sim.shutdown().await.expect("sim stop");
}
