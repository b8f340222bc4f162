//! The operator's daily tools end to end over gRPC on a real server:
//! shop payouts (exact, never beyond the balance even from concurrent
//! callers, idempotent, on the payout report, verified), suspending and
//! resuming a shop, rotating credentials, any trade's history, and the
//! paged lists of shops and carriers; only the operator may call them.
//! Each runs on every backend of `common/backends.rs`.

mod common;

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::{code_of, TestServer};
use syncpay::domain::TradeId;
use syncpay::proto::{self, TradeState as S};
use syncpay::register::{ChargeRequest, RegisterError, VirtualRegister};
use syncpay::terminal_sim::{CarrierSim, Policy};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);
const APPROVER: &str = "+818010000001";
const SLOW: &str = "+818010000002";

struct World {
    t: TestServer,
    shop_token: String,
    carrier_token: String,
    _sim: CarrierSim,
    register: VirtualRegister,
}

async fn world(backend: &'static BackendFactory) -> World {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    sim.add_handset(APPROVER, Policy::Approve).await.expect("handset");
    // Approves long after the test has suspended the shop.
    sim.add_handset(SLOW, Policy::ApproveAfter(Duration::from_secs(2))).await.expect("handset");
    t.top_up(APPROVER, 1_000_000, "JPY").await;
    t.top_up(SLOW, 1_000_000, "JPY").await;
    sim.wait_connected(WAIT).await.expect("relay connected");
    let register = VirtualRegister::open(t.channel().await, &shop_token, "till 1").await.expect("register");
    World { t, shop_token, carrier_token, _sim: sim, register }
}

impl World {
    async fn sale(&self, amount: u64) -> proto::Trade {
        let trade = self.register.charge(ChargeRequest::new(APPROVER, amount, "JPY", "book")).await.expect("charge");
        assert_eq!(S::try_from(trade.state), Ok(S::Settled));
        trade
    }
}

fn payout(amount: u64, key: &str) -> proto::PayoutShopRequest {
    proto::PayoutShopRequest {
        shop_id: "acme".into(),
        currency: "JPY".into(),
        amount_minor: amount,
        whole_balance: false,
        idempotency_key: key.into(),
    }
}

fn message<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String) {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payout_over_grpc_is_exact_idempotent_reported_and_verified() {
    for backend in backends() {
        a_payout_over_grpc_is_exact_idempotent_reported_and_verified_on(backend).await;
    }
}

async fn a_payout_over_grpc_is_exact_idempotent_reported_and_verified_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    w.sale(1_500).await;
    w.sale(500).await;
    let mut admin = w.t.admin().await;
    let r = admin.payout_shop(payout(1_200, "po-1")).await.expect("payout").into_inner();
    let p = r.payout.clone().expect("payout");
    assert_eq!((p.amount_minor, r.payable_balance_minor, r.replayed), (1_200, 800, false));
    assert_eq!(p.reference, format!("SYNCPAY-PO-{:011}", p.payout_id));
    assert_eq!(w.t.balance("shop:acme:JPY").await, 800);
    assert_eq!(w.t.balance("system:payout:JPY").await, 1_200);
    // A retry returns the original; a conflicting one names the field.
    let again = admin.payout_shop(payout(1_200, "po-1")).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!(again.payout, r.payout);
    let (code, text) = message(admin.payout_shop(payout(1_300, "po-1")).await);
    assert_eq!(code, Code::AlreadyExists);
    assert!(text.starts_with("amount_minor:"), "{text}");
    // Never beyond the balance; the message says what there is.
    let (code, text) = message(admin.payout_shop(payout(801, "po-2")).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(text.starts_with("amount_minor:") && text.ends_with("800"), "{text}");
    // Validation names the field.
    let (code, text) = message(admin.payout_shop(payout(5, "")).await);
    assert_eq!((code, text.starts_with("idempotency_key:")), (Code::InvalidArgument, true), "{text}");
    let (code, text) =
        message(admin.payout_shop(proto::PayoutShopRequest { currency: "XXQ".into(), ..payout(5, "k") }).await);
    assert_eq!((code, text.starts_with("currency:")), (Code::InvalidArgument, true), "{text}");
    let both = proto::PayoutShopRequest { whole_balance: true, ..payout(5, "k") };
    assert_eq!(code_of(admin.payout_shop(both).await), Code::InvalidArgument);
    let nobody = proto::PayoutShopRequest { shop_id: "nobody".into(), ..payout(5, "k2") };
    assert_eq!(code_of(admin.payout_shop(nobody).await), Code::NotFound);
    // The whole rest.
    let whole = proto::PayoutShopRequest { whole_balance: true, ..payout(0, "po-3") };
    let rest = admin.payout_shop(whole).await.expect("whole").into_inner();
    assert_eq!((rest.payout.expect("payout").amount_minor, rest.payable_balance_minor), (800, 0));
    // On the shop's own payout report and the operator's.
    let mut shop = w.t.shop(&w.shop_token).await;
    let report = shop
        .get_payout_report(proto::GetPayoutReportRequest { from_ms: 0, to_ms: i64::MAX })
        .await
        .expect("report")
        .into_inner();
    let amounts: Vec<u64> = report.payouts.iter().map(|p| p.amount_minor).collect();
    assert_eq!(amounts, [1_200, 800]);
    assert_eq!(report.wallet.iter().map(|x| x.net_minor).sum::<i64>(), 2_000, "sales are unchanged by payouts");
    let by_operator = admin
        .get_shop_payout_report(proto::GetShopPayoutReportRequest {
            shop_id: "acme".into(),
            from_ms: 0,
            to_ms: i64::MAX,
        })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(by_operator.payouts, report.payouts);
    // Only the operator pays out.
    let mut as_shop = proto::admin_service_client::AdminServiceClient::new(w.t.authed(&w.shop_token).await);
    assert!(matches!(
        code_of(as_shop.payout_shop(payout(1, "x")).await),
        Code::PermissionDenied | Code::Unauthenticated
    ));
    w.t.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_payout_calls_never_overdraw() {
    for backend in backends() {
        concurrent_payout_calls_never_overdraw_on(backend).await;
    }
}

async fn concurrent_payout_calls_never_overdraw_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    w.sale(5_000).await;
    let mut tasks = Vec::new();
    for task in 0..6 {
        let mut admin = w.t.admin().await;
        tasks.push(tokio::spawn(async move {
            let mut paid = 0;
            for n in 0..4 {
                match admin.payout_shop(payout(250, &format!("c{task}-{n}"))).await {
                    Ok(r) => paid += r.into_inner().payout.expect("payout").amount_minor,
                    Err(s) => assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}"),
                }
            }
            paid
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("task");
    }
    // 24 calls of 250 ask for 6 000 of 5 000: exactly 20 succeed.
    assert_eq!(total, 5_000);
    assert_eq!(w.t.balance("shop:acme:JPY").await, 0);
    w.t.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_shop_is_refused_new_trades_while_open_ones_settle_and_refunds_work() {
    for backend in backends() {
        a_suspended_shop_is_refused_new_trades_while_open_ones_settle_and_refunds_work_on(backend).await;
    }
}

async fn a_suspended_shop_is_refused_new_trades_while_open_ones_settle_and_refunds_work_on(
    backend: &'static BackendFactory,
) {
    let w = world(backend).await;
    let sold = w.sale(900).await;
    let open = w.register.create(ChargeRequest::new(SLOW, 700, "JPY", "slow")).await.expect("open trade");
    let mut admin = w.t.admin().await;
    let info =
        admin.suspend_shop(proto::SuspendShopRequest { shop_id: "acme".into() }).await.expect("suspend").into_inner();
    assert!(info.suspended);
    match w.register.create(ChargeRequest::new(APPROVER, 100, "JPY", "refused")).await {
        Err(RegisterError::Rpc { code: Code::FailedPrecondition, message }) => {
            assert!(message.starts_with("shop is suspended"), "{message}")
        }
        other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
    }
    // The trade opened before the suspension settles after it.
    let id = TradeId::parse(&open.trade_id).expect("id");
    let done = w.register.await_final(id, WAIT).await.expect("final");
    assert_eq!(S::try_from(done.state), Ok(S::Settled));
    assert!(done.finished_at_ms >= info.suspended_at_ms);
    // Refunds still work.
    w.register.refund(TradeId::parse(&sold.trade_id).expect("id"), 100, Some("r1")).await.expect("refund");
    let listed = admin.list_shops(proto::ListShopsRequest::default()).await.expect("shops").into_inner();
    assert!(listed.shops.iter().any(|s| s.shop_id == "acme" && s.suspended));
    let resumed =
        admin.resume_shop(proto::ResumeShopRequest { shop_id: "acme".into() }).await.expect("resume").into_inner();
    assert!(!resumed.suspended);
    w.sale(100).await;
    assert_eq!(
        code_of(admin.suspend_shop(proto::SuspendShopRequest { shop_id: "nobody".into() }).await),
        Code::NotFound
    );
    w.t.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_is_refused_at_once() {
    for backend in backends() {
        a_rotated_token_is_refused_at_once_on(backend).await;
    }
}

async fn a_rotated_token_is_refused_at_once_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let mut admin = w.t.admin().await;
    let mut old_shop = w.t.shop(&w.shop_token).await;
    old_shop.list_registers(proto::ListRegistersRequest {}).await.expect("old token works");
    let rotated = admin
        .rotate_credential(proto::RotateCredentialRequest {
            party: Some(proto::rotate_credential_request::Party::ShopId("acme".into())),
        })
        .await
        .expect("rotate")
        .into_inner();
    // The same connection, the old token: refused on its next call.
    assert_eq!(code_of(old_shop.list_registers(proto::ListRegistersRequest {}).await), Code::Unauthenticated);
    let mut new_shop = w.t.shop(&rotated.token).await;
    new_shop.list_registers(proto::ListRegistersRequest {}).await.expect("new token works");
    // A carrier's too.
    let mut old_carrier = w.t.carrier(&w.carrier_token).await;
    let report = || proto::ReportLeasesRequest::default();
    old_carrier.report_leases(report()).await.expect("old carrier token works");
    let carrier = admin
        .rotate_credential(proto::RotateCredentialRequest {
            party: Some(proto::rotate_credential_request::Party::CarrierId("docomo".into())),
        })
        .await
        .expect("rotate")
        .into_inner();
    assert_eq!(code_of(old_carrier.report_leases(report()).await), Code::Unauthenticated);
    w.t.carrier(&carrier.token).await.report_leases(report()).await.expect("new carrier token works");
    let nobody = proto::RotateCredentialRequest {
        party: Some(proto::rotate_credential_request::Party::ShopId("nobody".into())),
    };
    assert_eq!(code_of(admin.rotate_credential(nobody).await), Code::NotFound);
    assert_eq!(
        code_of(admin.rotate_credential(proto::RotateCredentialRequest { party: None }).await),
        Code::InvalidArgument
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_operator_sees_any_trade_history_and_pages_of_shops_and_carriers() {
    for backend in backends() {
        the_operator_sees_any_trade_history_and_pages_of_shops_and_carriers_on(backend).await;
    }
}

async fn the_operator_sees_any_trade_history_and_pages_of_shops_and_carriers_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let sold = w.sale(900).await;
    w.register.refund(TradeId::parse(&sold.trade_id).expect("id"), 300, None).await.expect("refund");
    let mut admin = w.t.admin().await;
    let h = admin
        .get_trade_history(proto::GetTradeHistoryRequest { trade_id: sold.trade_id.clone() })
        .await
        .expect("history")
        .into_inner();
    assert_eq!((h.shop_id.as_str(), h.subscriber_number.as_str(), h.carrier_id.as_str()), ("acme", APPROVER, "docomo"));
    assert_eq!(h.handset_public_key.len(), 32);
    let states: Vec<S> = h.events.iter().map(|e| S::try_from(e.state).expect("state")).collect();
    assert_eq!(states, [S::Pending, S::Offered, S::Settled, S::Settled]);
    assert!(h.events.windows(2).all(|p| p[0].at_ms <= p[1].at_ms && p[0].sequence < p[1].sequence));
    assert_eq!(h.events[3].refund_minor, 300);
    assert_eq!(h.postings.iter().filter(|p| p.kind == "SETTLEMENT").count(), 2);
    assert_eq!(h.postings.iter().filter(|p| p.kind == "REFUND").count(), 2);
    assert_eq!(
        code_of(admin.get_trade_history(proto::GetTradeHistoryRequest { trade_id: "trd_0000".into() }).await),
        Code::InvalidArgument
    );
    let unknown = TradeId::from_bytes([3; 16]).to_string();
    assert_eq!(
        code_of(admin.get_trade_history(proto::GetTradeHistoryRequest { trade_id: unknown }).await),
        Code::NotFound
    );

    // Pages of shops: 1 + 4 more, two at a time.
    for id in ["bbb", "ccc", "ddd", "eee"] {
        w.t.create_shop(id, id).await;
    }
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = admin
            .list_shops(proto::ListShopsRequest { after_shop_id: after.clone(), limit: 2 })
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.shops.iter().map(|s| s.shop_id.clone()));
        if page.next_after_shop_id.is_empty() {
            break;
        }
        after = page.next_after_shop_id;
    }
    assert_eq!(seen, ["acme", "bbb", "ccc", "ddd", "eee"]);
    assert_eq!(
        code_of(admin.list_shops(proto::ListShopsRequest { limit: 1001, ..Default::default() }).await),
        Code::InvalidArgument
    );
    let carriers = admin.list_carriers(proto::ListCarriersRequest::default()).await.expect("carriers").into_inner();
    assert_eq!(carriers.carriers.iter().map(|c| c.carrier_id.as_str()).collect::<Vec<_>>(), ["docomo"]);
    assert!(carriers.next_after_carrier_id.is_empty());
}

const BILLED: &str = "+818010000003";
/// The fee of `world`'s carrier (created with the default terms).
const CARRIER_FEE_BPS: u32 = 0;

/// Runs `syncpay admin ARGS` (the real binary) against the test server.
fn admin_cli(t: &TestServer, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_syncpay"))
        .arg("admin")
        .args(["--server", &t.server.url()])
        .args(["--token-file", &t.data_dir.join("admin.token").display().to_string()])
        .args(args)
        .output()
        .expect("run syncpay admin")
}

fn remittance(month: &str, amount: u64, key: &str) -> proto::RecordRemittanceRequest {
    proto::RecordRemittanceRequest {
        carrier_id: "docomo".into(),
        shop_id: "acme".into(),
        month: month.into(),
        currency: "JPY".into(),
        amount_minor: amount,
        idempotency_key: key.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carrier_remittances_and_the_statement_over_grpc_and_the_cli() {
    for backend in backends() {
        carrier_remittances_and_the_statement_over_grpc_and_the_cli_on(backend).await;
    }
}

/// docomo bills one 7 000 JPY sale at acme this month (and acme sells 500
/// from a wallet, which is not the carrier's); returns the month.
async fn billed_sale_this_month(w: &World) -> String {
    w._sim.add_handset(BILLED, Policy::Approve).await.expect("handset");
    let mut carrier = w.t.carrier(&w.carrier_token).await;
    carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: BILLED.into(),
            funding: proto::Funding::CarrierBill as i32,
            bill_currency: "JPY".into(),
            monthly_cap_minor: 100_000,
        })
        .await
        .expect("billing");
    carrier.accept_shop(proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect("accept");
    let trade = w.register.charge(ChargeRequest::new(BILLED, 7_000, "JPY", "book")).await.expect("charge");
    assert_eq!(S::try_from(trade.state), Ok(S::Settled));
    w.sale(500).await;
    syncpay::domain::Month::of(syncpay::domain::UnixMs(u64::try_from(trade.created_at_ms).expect("after 1970")))
        .to_string()
}

async fn carrier_remittances_and_the_statement_over_grpc_and_the_cli_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let month = billed_sale_this_month(&w).await;

    let mut admin = w.t.admin().await;
    let statement = |after: &str, limit: u32| proto::GetCarrierStatementRequest {
        carrier_id: "docomo".into(),
        month: month.clone(),
        after_shop_id: after.into(),
        limit,
    };
    let s = admin.get_carrier_statement(statement("", 0)).await.expect("statement").into_inner();
    assert_eq!((s.carrier_id.as_str(), s.month.as_str(), s.next_after_shop_id.as_str()), ("docomo", &*month, ""));
    let fee = 7_000 * u64::from(CARRIER_FEE_BPS) / 10_000;
    let owed = i64::try_from(7_000 - fee).expect("small");
    assert_eq!(s.lines.len(), 1, "{backend:?}: {s:?}");
    let l = &s.lines[0];
    assert_eq!(
        (l.shop_id.as_str(), l.gross_minor, l.fee_minor, l.owed_minor, l.remitted_minor, l.outstanding_minor),
        ("acme", 7_000, fee, owed, 0, owed),
        "{backend:?}"
    );
    // A full page names its last shop as the cursor.
    let page = admin.get_carrier_statement(statement("", 1)).await.expect("page").into_inner();
    assert_eq!(page.next_after_shop_id, "acme");
    let rest = admin.get_carrier_statement(statement("acme", 1)).await.expect("page").into_inner();
    assert!(rest.lines.is_empty() && rest.next_after_shop_id.is_empty(), "{rest:?}");

    // The month is still running: its sales can change, nothing is remitted.
    let (code, text) = message(admin.record_remittance(remittance(&month, 1, "rm-1")).await);
    assert_eq!(code, Code::FailedPrecondition, "{backend:?}: {text}");
    assert!(text.starts_with("month: has not ended"), "{text}");
    // A month long over, in which docomo owed acme nothing.
    let (code, text) = message(admin.record_remittance(remittance("2020-01", 1, "rm-2")).await);
    assert_eq!(code, Code::FailedPrecondition, "{text}");
    assert!(text.starts_with("amount_minor:") && text.ends_with("outstanding is 0"), "{text}");
    // Validation names the field; unknown parties are NOT_FOUND.
    for (request, field) in [
        (remittance("2020-13", 1, "k"), "month:"),
        (remittance("2020-01", 0, "k"), "amount_minor:"),
        (remittance("2020-01", 1, ""), "idempotency_key:"),
        (proto::RecordRemittanceRequest { currency: "XXQ".into(), ..remittance("2020-01", 1, "k") }, "currency:"),
        (proto::RecordRemittanceRequest { carrier_id: "NO".into(), ..remittance("2020-01", 1, "k") }, "carrier_id:"),
    ] {
        let (code, text) = message(admin.record_remittance(request).await);
        assert_eq!((code, text.starts_with(field)), (Code::InvalidArgument, true), "{field} {text}");
    }
    let nobody = proto::RecordRemittanceRequest { shop_id: "nobody".into(), ..remittance("2020-01", 1, "k3") };
    assert_eq!(code_of(admin.record_remittance(nobody).await), Code::NotFound);
    let no_carrier = proto::GetCarrierStatementRequest { carrier_id: "nobody".into(), ..statement("", 0) };
    assert_eq!(code_of(admin.get_carrier_statement(no_carrier).await), Code::NotFound);
    let too_many = statement("", 1001);
    assert_eq!(code_of(admin.get_carrier_statement(too_many).await), Code::InvalidArgument);
    // Only the operator.
    let mut as_shop = proto::admin_service_client::AdminServiceClient::new(w.t.authed(&w.shop_token).await);
    assert!(matches!(
        code_of(as_shop.get_carrier_statement(statement("", 0)).await),
        Code::PermissionDenied | Code::Unauthenticated
    ));
    assert!(matches!(
        code_of(as_shop.record_remittance(remittance("2020-01", 1, "x")).await),
        Code::PermissionDenied | Code::Unauthenticated
    ));

    // The CLI exports the statement as CSV and JSON.
    let out = admin_cli(&w.t, &["carrier-statement", "docomo", &month, "--csv"]);
    assert!(out.status.success(), "{out:?}");
    let csv = String::from_utf8_lossy(&out.stdout).into_owned();
    let want = format!(
        "carrier_id,month,shop_id,currency,gross_minor,fee_minor,refunded_minor,owed_minor,remitted_minor,outstanding_minor,settlements\n\
         docomo,{month},acme,JPY,7000,{fee},0,{owed},0,{owed},1\n\
         docomo,{month},TOTAL,JPY,,,,{owed},0,{owed},\n"
    );
    assert_eq!(csv, want, "{backend:?}");
    let out = admin_cli(&w.t, &["carrier-statement", "docomo", &month, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    assert_eq!(json["lines"][0]["owed_minor"], owed);
    assert_eq!(json["lines"][0]["shop_id"], "acme");
    assert_eq!(json["totals"][0]["outstanding_minor"], owed.to_string());
    let out = admin_cli(&w.t, &["remittance", "docomo", "acme", &month, "JPY", "1", "--key", "cli"]);
    assert_eq!(out.status.code(), Some(4), "refused: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has not ended"), "{out:?}");
    w.t.assert_ledger_ok().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remittance_for_a_month_long_over_is_recorded_over_grpc() {
    for backend in backends() {
        a_remittance_for_a_month_long_over_is_recorded_over_grpc_on(backend).await;
    }
}

/// The carrier-billed sales of January 2026 (`billed_month_at`, written
/// through the store: the API sells only now) and a remittance for them
/// through AdminService: a partial one, its retry, one for the rest, one
/// too many; the statement and VerifyLedger after each.
async fn a_remittance_for_a_month_long_over_is_recorded_over_grpc_on(backend: &'static BackendFactory) {
    use syncpay::store::fixture::{billed_month_at, BilledMonth, FEB_2026, JAN_2026};
    let (t, _month) = TestServer::start_on_filled(backend, |store| billed_month_at(store, JAN_2026, FEB_2026)).await;
    let mut admin = t.admin().await;
    let owed = BilledMonth::ACME_JAN_OWED;
    let acme_line =
        |s: &proto::CarrierStatement| s.lines.iter().find(|l| l.shop_id == "acme").cloned().expect("acme's line");
    let statement = proto::GetCarrierStatementRequest {
        carrier_id: "docomo".into(),
        month: "2026-01".into(),
        after_shop_id: String::new(),
        limit: 0,
    };
    let before = admin.get_carrier_statement(statement.clone()).await.expect("statement").into_inner();
    let line = acme_line(&before);
    assert_eq!((line.owed_minor, line.remitted_minor, line.outstanding_minor), (owed as i64, 0, owed as i64));

    let first = admin.record_remittance(remittance("2026-01", 1_200, "jan-1")).await.expect("remit").into_inner();
    let paid = first.remittance.clone().expect("remittance");
    assert!(!first.replayed);
    assert_eq!((paid.amount_minor, paid.month.as_str(), paid.shop_id.as_str()), (1_200, "2026-01", "acme"));
    let line = first.line.expect("line");
    assert_eq!((line.remitted_minor, line.outstanding_minor), (1_200, owed as i64 - 1_200));
    assert_eq!(t.balance("carrier:docomo:remitted:JPY").await.unsigned_abs(), 1_200);

    let again = admin.record_remittance(remittance("2026-01", 1_200, "jan-1")).await.expect("retry").into_inner();
    assert!(again.replayed);
    assert_eq!(again.remittance.expect("remittance").remittance_id, paid.remittance_id);
    let (code, text) = message(admin.record_remittance(remittance("2026-01", 1_300, "jan-1")).await);
    assert_eq!(code, Code::AlreadyExists, "{text}");
    assert!(text.starts_with("amount_minor:"), "{text}");

    let (code, text) = message(admin.record_remittance(remittance("2026-01", owed - 1_199, "jan-2")).await);
    assert_eq!(code, Code::FailedPrecondition, "{text}");
    assert!(text.contains("amount_minor:"), "{text}");
    let rest = admin.record_remittance(remittance("2026-01", owed - 1_200, "jan-2")).await.expect("rest").into_inner();
    assert_eq!(rest.line.expect("line").outstanding_minor, 0);
    let after = admin.get_carrier_statement(statement).await.expect("statement").into_inner();
    let line = acme_line(&after);
    assert_eq!((line.remitted_minor, line.outstanding_minor, line.remittances), (owed, 0, 2));
    t.assert_ledger_ok().await;
}

/// CarrierService.GetRemittanceStatement: a carrier reads with its own
/// credential the statement the operator reads for it, page by page, and
/// only its own: another carrier's shows none of docomo's sales.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_reads_its_own_remittance_statement_and_no_other() {
    for backend in backends() {
        let w = world(backend).await;
        let month = billed_sale_this_month(&w).await;
        let mut admin = w.t.admin().await;
        let by_operator = admin
            .get_carrier_statement(proto::GetCarrierStatementRequest {
                carrier_id: "docomo".into(),
                month: month.clone(),
                ..Default::default()
            })
            .await
            .expect("operator's statement")
            .into_inner();
        assert_eq!(by_operator.lines.len(), 1, "{backend:?}: {by_operator:?}");
        let mut docomo = w.t.carrier(&w.carrier_token).await;
        let page = |after: &str, limit: u32| proto::GetRemittanceStatementRequest {
            month: month.clone(),
            after_shop_id: after.into(),
            limit,
        };
        let own = docomo.get_remittance_statement(page("", 0)).await.expect("own statement").into_inner();
        assert_eq!(own, by_operator, "{backend:?}");
        assert_eq!(own.lines[0].shop_id, "acme");
        let first = docomo.get_remittance_statement(page("", 1)).await.expect("page").into_inner();
        assert_eq!(first.next_after_shop_id, "acme");
        let rest = docomo.get_remittance_statement(page("acme", 1)).await.expect("page").into_inner();
        assert!(rest.lines.is_empty() && rest.next_after_shop_id.is_empty(), "{rest:?}");
        for (request, field) in [
            (proto::GetRemittanceStatementRequest { month: "2020-13".into(), ..page("", 0) }, "month:"),
            (proto::GetRemittanceStatementRequest { month: String::new(), ..page("", 0) }, "month:"),
            (page("Not A Shop", 0), "after_shop_id:"),
            (page("", 1001), "limit:"),
        ] {
            let (code, text) = message(docomo.get_remittance_statement(request).await);
            assert_eq!((code, text.starts_with(field)), (Code::InvalidArgument, true), "{field} {text}");
        }
        // Another carrier sees its own (empty) statement, never docomo's.
        let kddi_token = w.t.create_carrier("kddi", "KDDI").await;
        let mut kddi = w.t.carrier(&kddi_token).await;
        let theirs = kddi.get_remittance_statement(page("", 0)).await.expect("kddi's statement").into_inner();
        assert_eq!(theirs.carrier_id, "kddi");
        assert!(theirs.lines.is_empty(), "{backend:?}: {theirs:?}");
        // A shop's credential is not a carrier's.
        let mut as_shop = proto::carrier_service_client::CarrierServiceClient::new(w.t.authed(&w.shop_token).await);
        assert!(matches!(
            code_of(as_shop.get_remittance_statement(page("", 0)).await),
            Code::PermissionDenied | Code::Unauthenticated
        ));
        w.t.server.shutdown().await.expect("shutdown");
    }
}
