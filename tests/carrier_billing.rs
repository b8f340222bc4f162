//! Network identity and carrier billing end to end in push mode (ask mode:
//! `carrier_ask.rs`): a real server, carriers with IP prefixes, leases
//! reported over gRPC, a shop naming payers by the
//! address it saw, handsets in `terminal_sim` approving, charges landing on
//! carrier bills within their caps; statements and payout reports equal to
//! the ledger; and nothing the shop receives names the subscriber.

mod common;

use common::{by_ip, now_ms, refusal, trade_state as state};

use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::{code_of, TestServer};
use syncpay::client::AuthedChannel;
use syncpay::domain::{Month, ShopId, SubscriberNumber, UnixMs};
use syncpay::proto::carrier_service_client::CarrierServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, FailureReason as FR, TradeState as S};
use syncpay::terminal_sim::{CarrierSim, Policy};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);
/// Carrier-billed, cap 10 000 JPY.
const ALICE: &str = "+818020000001";
/// Carrier-billed, cap 10 000 JPY.
const BOB: &str = "+818020000002";
/// Wallet-funded (topped up).
const CAROL: &str = "+818020000003";

struct World {
    t: TestServer,
    shop: RegisterServiceClient<AuthedChannel>,
    other_shop: RegisterServiceClient<AuthedChannel>,
    carrier: CarrierServiceClient<AuthedChannel>,
    register_id: String,
    other_register_id: String,
    _sim: CarrierSim,
    /// A little in the past, so every lease time is.
    base: i64,
}

async fn world(backend: &'static BackendFactory) -> World {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let other_token = t.create_shop("other", "Other Shop").await;
    let carrier_token = t
        .admin()
        .await
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "docomo".into(),
            display_name: "Docomo".into(),
            ip_prefixes: vec!["198.51.100.0/24".into(), "2001:db8:1::/48".into()],
            fee_bps: 250,
            // This suite is push mode's (ask mode: tests/carrier_ask.rs).
            resolve_mode: proto::ResolveMode::Push as i32,
        })
        .await
        .expect("carrier")
        .into_inner()
        .token;
    t.admin()
        .await
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "kddi".into(),
            display_name: "KDDI".into(),
            ip_prefixes: vec!["203.0.113.0/24".into()],
            fee_bps: 0,
            resolve_mode: proto::ResolveMode::Push as i32,
        })
        .await
        .expect("second carrier");
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    for n in [ALICE, BOB, CAROL] {
        sim.add_handset(n, Policy::Approve).await.expect("handset");
    }
    let mut carrier = t.carrier(&carrier_token).await;
    for n in [ALICE, BOB] {
        // Re-enrolling switches the simulator's wallet subscriber to billing.
        let r = carrier
            .enroll_subscriber(proto::EnrollSubscriberRequest {
                subscriber_number: n.into(),
                funding: proto::Funding::CarrierBill as i32,
                bill_currency: "JPY".into(),
                monthly_cap_minor: 10_000,
            })
            .await
            .expect("billing")
            .into_inner();
        assert_eq!((r.funding, r.monthly_cap_minor), (proto::Funding::CarrierBill as i32, 10_000));
    }
    t.top_up(CAROL, 50_000, "JPY").await;
    sim.wait_connected(WAIT).await.expect("relay");
    let accepted = carrier.accept_shop(proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect("accept");
    assert!(accepted.into_inner().accepted);
    let mut shop = t.shop(&shop_token).await;
    let mut other_shop = t.shop(&other_token).await;
    let open = |label: &str| proto::OpenRegisterRequest { label: label.into() };
    let register_id = shop.open_register(open("web")).await.expect("register").into_inner().register_id;
    let other_register_id = other_shop.open_register(open("web")).await.expect("register").into_inner().register_id;
    let base = now_ms() - 3_600_000;
    World { t, shop, other_shop, carrier, register_id, other_register_id, _sim: sim, base }
}

fn lease(ip: &str, ports: (u32, u32), who: &str, at: i64) -> proto::LeaseStart {
    proto::LeaseStart { ip: ip.into(), port_lo: ports.0, port_hi: ports.1, subscriber_number: who.into(), start_ms: at }
}

fn by_number(register_id: &str, amount: u64, currency: &str, number: &str) -> proto::CreateTradeRequest {
    proto::CreateTradeRequest {
        register_id: register_id.into(),
        amount_minor: amount,
        currency: currency.into(),
        description: "Two books".into(),
        ttl_seconds: 30,
        payer: Some(proto::create_trade_request::Payer::SubscriberNumber(number.into())),
        ..Default::default()
    }
}

impl World {
    /// Creates a trade and waits for its final state.
    async fn pay(&mut self, request: proto::CreateTradeRequest) -> proto::Trade {
        let created = self.shop.create_trade(request).await.expect("create").into_inner();
        self.finish(created).await
    }

    async fn finish(&mut self, created: proto::Trade) -> proto::Trade {
        if state(&created).0 != S::Pending {
            return created;
        }
        let request = proto::AwaitTradeRequest { trade_id: created.trade_id.clone(), wait_ms: 15_000 };
        self.shop.await_trade(request).await.expect("await").into_inner()
    }

    fn pseudonym(&self, number: &str) -> String {
        let shop = ShopId::parse("acme").expect("shop");
        self.t.config.secret.payer_pseudonym(&shop, &SubscriberNumber::parse(number).expect("number"))
    }
}

#[tokio::test]
async fn prefixes_are_validated_and_carriers_never_overlap() {
    for backend in backends() {
        prefixes_are_validated_and_carriers_never_overlap_on(backend).await;
    }
}

async fn prefixes_are_validated_and_carriers_never_overlap_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let mut admin = w.t.admin().await;
    let add = |prefixes: &[&str], carrier: &str| {
        let request = proto::AddCarrierPrefixesRequest {
            carrier_id: carrier.into(),
            ip_prefixes: prefixes.iter().map(|p| (*p).to_owned()).collect(),
        };
        let mut admin = admin.clone();
        async move { admin.add_carrier_prefixes(request).await }
    };
    let check =
        |r: Result<tonic::Response<proto::AddCarrierPrefixesResponse>, tonic::Status>, code: Code, text: &str| {
            let s = r.expect_err("refused");
            assert_eq!(s.code(), code, "{s:?}");
            assert!(s.message().starts_with(text), "{s:?}");
        };
    check(add(&["203.0.114.0/24", "198.51.100.128/25"], "kddi").await, Code::FailedPrecondition, "ip_prefixes[1]");
    check(add(&["198.51.0.0/16"], "kddi").await, Code::FailedPrecondition, "ip_prefixes[0]");
    check(add(&["2001:db8::/32"], "kddi").await, Code::FailedPrecondition, "ip_prefixes[0]");
    check(add(&["10.0.0.1/8"], "kddi").await, Code::InvalidArgument, "ip_prefixes: [0]");
    check(add(&["10.0.0.0/33"], "kddi").await, Code::InvalidArgument, "ip_prefixes: [0]");
    check(add(&["not-an-ip/8"], "kddi").await, Code::InvalidArgument, "ip_prefixes: [0]");
    check(add(&["10.0.0.0/8"], "nobody").await, Code::NotFound, "carrier");
    // A carrier's own prefixes may nest and repeat.
    let ok = add(&["198.51.100.0/25", "198.51.100.0/24"], "docomo").await.expect("own").into_inner();
    assert_eq!(ok.ip_prefixes, vec!["198.51.100.0/25", "198.51.100.0/24"]);
    let fee = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "x".into(),
            display_name: "X".into(),
            fee_bps: 10_001,
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(fee), Code::InvalidArgument);
    // A carrier reports leases only inside its prefixes and for its own
    // subscribers; the whole batch is refused, naming the entry.
    let mut carrier = w.carrier.clone();
    let outside =
        proto::ReportLeasesRequest { starts: vec![lease("203.0.113.5", (0, 0), ALICE, w.base)], stops: vec![] };
    let s = carrier.report_leases(outside).await.expect_err("outside");
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().starts_with("starts[0].ip"), "{s:?}");
    let bad_ports = proto::ReportLeasesRequest {
        starts: vec![lease("198.51.100.5", (0, 0), ALICE, w.base), lease("198.51.100.5", (2000, 1000), ALICE, w.base)],
        stops: vec![],
    };
    let s = carrier.report_leases(bad_ports).await.expect_err("ports");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("starts[1].port_lo"), "{s:?}");
}

#[tokio::test]
async fn network_identity_resolves_the_payer_and_the_shop_learns_nothing() {
    for backend in backends() {
        network_identity_resolves_the_payer_and_the_shop_learns_nothing_on(backend).await;
    }
}

async fn network_identity_resolves_the_payer_and_the_shop_learns_nothing_on(backend: &'static BackendFactory) {
    let mut w = world(backend).await;
    let b = w.base;
    let leases = proto::ReportLeasesRequest {
        starts: vec![
            // Reassigned: Alice, then Bob.
            lease("198.51.100.7", (0, 0), ALICE, b),
            lease("198.51.100.7", (0, 0), BOB, b + 60_000),
            // CGNAT: Bob and Carol share an address, one port block each.
            lease("198.51.100.9", (1024, 2047), BOB, b),
            lease("198.51.100.9", (2048, 3071), CAROL, b),
            // IPv6.
            lease("2001:db8:1::42", (0, 0), ALICE, b),
        ],
        stops: vec![proto::LeaseStop { ip: "198.51.100.7".into(), port_lo: 0, port_hi: 0, end_ms: b + 120_000 }],
    };
    // Reported twice: recording is idempotent.
    for _ in 0..2 {
        let r = w.carrier.report_leases(leases.clone()).await.expect("leases").into_inner();
        assert_eq!((r.starts_recorded, r.stops_recorded), (5, 1));
    }
    let reg = w.register_id.clone();
    let cases = [
        ("198.51.100.7", 0, b + 30_000, ALICE),
        ("198.51.100.7", 443, b + 90_000, BOB),
        ("198.51.100.9", 1500, b + 10, BOB),
        ("198.51.100.9", 2500, b + 10, CAROL),
        ("2001:db8:1::42", 0, b + 10, ALICE),
        ("::ffff:198.51.100.7", 0, b + 30_001, ALICE),
    ];
    let mut seen = Vec::new();
    for (ip, port, at, who) in cases {
        let t = w.pay(by_ip(&reg, 1_000, ip, port, at)).await;
        assert_eq!(state(&t), (S::Settled, FR::Unspecified), "{ip} {port}");
        assert_eq!(t.payer_pseudonym, w.pseudonym(who), "{ip} {port} should resolve to {who}");
        seen.push(t);
    }
    // 2.5% fee: each 1 000 charge leaves 975 with the shop.
    assert_eq!(w.t.balance(&format!("bill:docomo:{ALICE}:JPY")).await, -3_000);
    assert_eq!(w.t.balance(&format!("bill:docomo:{BOB}:JPY")).await, -2_000);
    assert_eq!(w.t.balance(&format!("wallet:{CAROL}:JPY")).await, 49_000);
    assert_eq!(w.t.balance("carrier:docomo:fees:JPY").await, 125);
    assert_eq!(w.t.balance("shop:acme:JPY").await, 5 * 975 + 1_000);

    // Misses: no carrier for the range, no lease at the instant, an ended
    // lease, a CGNAT address without a port: one message for all.
    let mut messages = Vec::new();
    for (ip, port, at) in [
        ("192.0.2.1", 0, b),
        ("198.51.100.250", 0, b),
        ("198.51.100.7", 0, b + 120_000),
        ("198.51.100.7", 0, b - 1),
        ("198.51.100.9", 0, b + 10),
        ("198.51.100.9", 4000, b + 10),
        ("2001:db8:1::43", 0, b),
    ] {
        let (code, message) = refusal(w.shop.create_trade(by_ip(&reg, 1_000, ip, port, at)).await);
        assert_eq!(code, Code::FailedPrecondition, "{ip}");
        messages.push(message);
    }
    messages.dedup();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert!(messages[0].starts_with("network_identity:"), "{messages:?}");

    // A shop the carrier has not accepted.
    let other = w.other_register_id.clone();
    let (code, message) = refusal(w.other_shop.create_trade(by_ip(&other, 1_000, "198.51.100.7", 0, b + 10)).await);
    assert_eq!(code, Code::FailedPrecondition);
    assert!(message.contains("has not accepted this shop"), "{message}");

    // Validation of the identity itself.
    let invalid = |ip: &str, port: u32, at: i64| by_ip(&reg, 1_000, ip, port, at);
    for (request, field) in [
        (invalid("198.51.100.7", 0, now_ms() + 3_600_000), "network_identity.observed_at_ms"),
        (invalid("198.51.100.7", 0, now_ms() - 91 * 86_400_000), "network_identity.observed_at_ms"),
        (invalid("198.51.100.7", 0, -5), "network_identity.observed_at_ms"),
        (invalid("198.51.100.777", 0, b), "network_identity.ip"),
        (invalid("198.51.100.7", 70_000, b), "network_identity.port"),
    ] {
        let (code, message) = refusal(w.shop.create_trade(request).await);
        assert_eq!(code, Code::InvalidArgument);
        assert!(message.starts_with(field), "{message}");
    }

    // Idempotent retries compare the identity as sent, never the resolution.
    let mut keyed = by_ip(&reg, 500, "198.51.100.7", 0, b + 30_000);
    keyed.idempotency_key = "order-7".into();
    let first = w.pay(keyed.clone()).await;
    let again = w.shop.create_trade(keyed.clone()).await.expect("replay").into_inner();
    assert_eq!(again.trade_id, first.trade_id);
    keyed.payer = Some(proto::create_trade_request::Payer::NetworkIdentity(proto::NetworkIdentity {
        ip: "198.51.100.7".into(),
        port: 0,
        observed_at_ms: b + 90_000,
    }));
    let s = w.shop.create_trade(keyed).await.expect_err("conflict");
    assert_eq!(s.code(), Code::AlreadyExists);
    assert!(s.message().starts_with("network_identity.observed_at_ms"), "{s:?}");
    seen.push(first);

    // Nothing the shop received names the subscriber: not the number, not
    // the address (text or bytes), in trades, events or the payout report.
    let bytes = common::everything_the_shop_received(&mut w.shop, &seen).await;
    let forbidden: Vec<Vec<u8>> = [ALICE, BOB, CAROL]
        .iter()
        .flat_map(|n| [n.as_bytes().to_vec(), n.as_bytes()[3..].to_vec()])
        .chain(["198.51.100", "2001:db8"].iter().map(|s| s.as_bytes().to_vec()))
        .chain([vec![198u8, 51, 100, 7], vec![198, 51, 100, 9]])
        .collect();
    for blob in &bytes {
        for f in &forbidden {
            assert!(
                !blob.windows(f.len()).any(|win| win == f.as_slice()),
                "the shop saw {:?}",
                String::from_utf8_lossy(f)
            );
        }
    }
    w.t.assert_ledger_ok().await;
}

/// Issue 11: what a refused network identity tells a shop. Two answers
/// only. A shop the range's carrier has not accepted gets "has not
/// accepted this shop", byte for byte the same whether anyone held the
/// address then or not (a carrier's ranges are public, so this says
/// nothing about a subscriber). Every other miss is one message, byte for
/// byte: outside every range, never leased, not leased at that instant, or
/// leased to a subscriber who cannot be offered anything (no handset).
/// No trade is created for any of them.
#[tokio::test]
async fn a_network_identity_refusal_reveals_nothing_about_who_held_the_address() {
    for backend in backends() {
        a_network_identity_refusal_reveals_nothing_about_who_held_the_address_on(backend).await;
    }
}

async fn a_network_identity_refusal_reveals_nothing_about_who_held_the_address_on(backend: &'static BackendFactory) {
    const DAVE: &str = "+818020000004";
    let mut w = world(backend).await;
    let b = w.base;
    // Dave is the carrier's subscriber but has no handset.
    w.carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: DAVE.into(),
            funding: proto::Funding::Wallet as i32,
            ..Default::default()
        })
        .await
        .expect("enroll");
    let leases = proto::ReportLeasesRequest {
        starts: vec![
            lease("198.51.100.7", (0, 0), ALICE, b),
            lease("198.51.100.8", (0, 0), DAVE, b),
            lease("2001:db8:1::42", (0, 0), ALICE, b),
        ],
        stops: Vec::new(),
    };
    w.carrier.report_leases(leases).await.expect("leases");
    let trades_before = w.t.assert_ledger_ok().await.trades_checked;
    let (reg, other_reg) = (w.register_id.clone(), w.other_register_id.clone());

    // The accepted shop: every miss is the same message.
    let mut misses = Vec::new();
    for (ip, at) in [
        ("192.0.2.1", b + 10),
        ("198.51.100.250", b + 10),
        ("198.51.100.7", b - 1),
        ("198.51.100.8", b + 10),
        ("2001:db8:1::43", b + 10),
    ] {
        let (code, message) = refusal(w.shop.create_trade(by_ip(&reg, 1_000, ip, 0, at)).await);
        assert_eq!(code, Code::FailedPrecondition, "{ip}: {message}");
        misses.push((ip, message));
    }
    let miss = misses[0].1.clone();
    assert!(miss.starts_with("network_identity:"), "{miss}");
    for (ip, message) in &misses {
        assert_eq!(message, &miss, "{ip}");
    }

    // A shop the range's carrier has not accepted: the same answer whether
    // the address was held or not, and for any carrier's range. Outside
    // every range it is the miss, as for anyone.
    let mut not_accepted = Vec::new();
    for (accepted_by_docomo, ip) in [
        (false, "198.51.100.7"),
        (false, "198.51.100.8"),
        (false, "198.51.100.250"),
        (false, "2001:db8:1::42"),
        (false, "2001:db8:1::43"),
        (false, "203.0.113.5"),
        // acme, which docomo accepted but kddi did not.
        (true, "203.0.113.5"),
    ] {
        let (shop, register) = if accepted_by_docomo { (&mut w.shop, &reg) } else { (&mut w.other_shop, &other_reg) };
        let (code, message) = refusal(shop.create_trade(by_ip(register, 1_000, ip, 0, b + 10)).await);
        assert_eq!(code, Code::FailedPrecondition, "{ip}: {message}");
        not_accepted.push((ip, message));
    }
    let refused = not_accepted[0].1.clone();
    assert!(refused.starts_with("network_identity:") && refused.contains("has not accepted this shop"), "{refused}");
    for (ip, message) in &not_accepted {
        assert_eq!(message, &refused, "{ip}");
    }
    assert_ne!(refused, miss);
    let (_, outside) = refusal(w.other_shop.create_trade(by_ip(&other_reg, 1_000, "192.0.2.1", 0, b + 10)).await);
    assert_eq!(outside, miss);
    assert_eq!(w.t.assert_ledger_ok().await.trades_checked, trades_before, "a refusal creates no trade");
}

#[tokio::test]
async fn caps_refunds_acceptance_statements_and_payouts_reconcile() {
    for backend in backends() {
        caps_refunds_acceptance_statements_and_payouts_reconcile_on(backend).await;
    }
}

async fn caps_refunds_acceptance_statements_and_payouts_reconcile_on(backend: &'static BackendFactory) {
    let mut w = world(backend).await;
    let reg = w.register_id.clone();
    let month = Month::of(UnixMs(u64::try_from(now_ms()).expect("positive"))).to_string();
    let first = w.pay(by_number(&reg, 6_000, "JPY", ALICE)).await;
    assert_eq!(state(&first), (S::Settled, FR::Unspecified));
    let over = w.pay(by_number(&reg, 5_000, "JPY", ALICE)).await;
    assert_eq!(state(&over), (S::Failed, FR::SpendingCap));
    // A refund frees cap in the month of the charge.
    let refund =
        proto::RefundTradeRequest { trade_id: first.trade_id.clone(), amount_minor: 2_000, ..Default::default() };
    w.shop.refund_trade(refund).await.expect("refund");
    let fits = w.pay(by_number(&reg, 5_000, "JPY", ALICE)).await;
    assert_eq!(state(&fits), (S::Settled, FR::Unspecified));
    // A bill in JPY has no cap in USD.
    let usd = w.pay(by_number(&reg, 100, "USD", ALICE)).await;
    assert_eq!(state(&usd), (S::Failed, FR::SpendingCap));
    // Wallet trades in the same period are reported separately.
    let wallet = w.pay(by_number(&reg, 700, "JPY", CAROL)).await;
    assert_eq!(state(&wallet), (S::Settled, FR::Unspecified));
    let bob = w.pay(by_number(&reg, 999, "JPY", BOB)).await;
    assert_eq!(state(&bob), (S::Settled, FR::Unspecified));

    // Revoked: carrier-billed payers named by number fail at once; wallet
    // payers named by number are not the carrier's risk and still pay.
    w.carrier.revoke_shop(proto::RevokeShopRequest { shop_id: "acme".into() }).await.expect("revoke");
    let refused = w.shop.create_trade(by_number(&reg, 100, "JPY", BOB)).await.expect("create").into_inner();
    assert_eq!(state(&refused), (S::Failed, FR::CarrierRefusedShop));
    let still = w.pay(by_number(&reg, 100, "JPY", CAROL)).await;
    assert_eq!(state(&still), (S::Settled, FR::Unspecified));
    w.carrier.accept_shop(proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect("accept again");

    // The statement: lines, refunds, totals, fees; equal to the bill account.
    let statement = w
        .carrier
        .get_statement(proto::GetStatementRequest {
            subscriber_number: ALICE.into(),
            month: month.clone(),
            ..Default::default()
        })
        .await
        .expect("statement")
        .into_inner();
    let lines: Vec<(u64, u64, &str)> =
        statement.lines.iter().map(|l| (l.amount_minor, l.refunded_minor, l.shop_name.as_str())).collect();
    assert_eq!(lines, vec![(6_000, 2_000, "Acme Books"), (5_000, 0, "Acme Books")]);
    assert_eq!((statement.charged_minor, statement.refunded_minor, statement.total_minor), (11_000, 2_000, 9_000));
    assert_eq!((statement.fee_minor, statement.monthly_cap_minor, statement.currency.as_str()), (275, 10_000, "JPY"));
    assert_eq!(statement.lines[0].trade_id, first.trade_id);
    assert_eq!(
        i64::try_from(statement.total_minor).expect("fits"),
        -w.t.balance(&format!("bill:docomo:{ALICE}:JPY")).await
    );
    // The operator sees the same; another carrier's subscriber is NOT_FOUND.
    let admin_view =
        w.t.admin()
            .await
            .get_statement(proto::GetStatementRequest {
                subscriber_number: ALICE.into(),
                month: month.clone(),
                carrier_id: "docomo".into(),
            })
            .await
            .expect("admin statement")
            .into_inner();
    assert_eq!(admin_view, statement);
    let wallet_statement = w
        .carrier
        .get_statement(proto::GetStatementRequest { subscriber_number: CAROL.into(), month, ..Default::default() })
        .await;
    assert_eq!(code_of(wallet_statement), Code::NotFound);

    // The payout report: per carrier gross, fees, refunds and net; wallet
    // separately; together exactly the shop's payable balance.
    let report = w
        .shop
        .get_payout_report(proto::GetPayoutReportRequest { from_ms: 0, to_ms: now_ms() + 60_000 })
        .await
        .expect("report")
        .into_inner();
    assert_eq!(report.carriers.len(), 1);
    let c = &report.carriers[0];
    assert_eq!((c.carrier_id.as_str(), c.currency.as_str()), ("docomo", "JPY"));
    assert_eq!((c.gross_minor, c.fee_minor, c.refunded_minor, c.settlements), (11_999, 275 + 24, 2_000, 3));
    assert_eq!(c.net_minor, 11_999 - 299 - 2_000);
    assert_eq!(report.wallet.len(), 1);
    assert_eq!((report.wallet[0].gross_minor, report.wallet[0].net_minor, report.wallet[0].settlements), (800, 800, 2));
    assert_eq!(c.net_minor + report.wallet[0].net_minor, w.t.balance("shop:acme:JPY").await);
    assert_eq!(w.t.balance("carrier:docomo:fees:JPY").await, 299);
    let bad = w.shop.get_payout_report(proto::GetPayoutReportRequest { from_ms: 10, to_ms: 10 }).await;
    assert_eq!(code_of(bad), Code::InvalidArgument);
    w.t.assert_ledger_ok().await;
}

/// A single-address prefix (/32, /128) is a valid carrier range. Creating
/// one used to panic the store's writer (`u128 >> 128` in the overlap
/// check), after which the store refused every write.
#[tokio::test]
async fn single_address_prefixes_are_ranges_like_any_other() {
    for backend in backends() {
        single_address_prefixes_are_ranges_like_any_other_on(backend).await;
    }
}

async fn single_address_prefixes_are_ranges_like_any_other_on(backend: &'static BackendFactory) {
    let w = world(backend).await;
    let mut admin = w.t.admin().await;
    let created = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "loop".into(),
            display_name: "Loopback Mobile".into(),
            ip_prefixes: vec!["127.0.0.1/32".into(), "::1/128".into()],
            fee_bps: 0,
            ..Default::default()
        })
        .await
        .expect("single-address prefixes are accepted");
    assert!(!created.into_inner().token.is_empty());
    // They overlap like any other range: the same address is refused for
    // another carrier, its neighbour is not.
    let add = |prefix: &str| proto::AddCarrierPrefixesRequest {
        carrier_id: "docomo".into(),
        ip_prefixes: vec![prefix.into()],
    };
    let s = admin.add_carrier_prefixes(add("127.0.0.1/32")).await.expect_err("taken");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    let s = admin.add_carrier_prefixes(add("127.0.0.0/8")).await.expect_err("contains it");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    admin.add_carrier_prefixes(add("127.0.0.2/32")).await.expect("the neighbour is free");
    // And the store still takes writes.
    w.t.create_shop("after", "After").await;
}
