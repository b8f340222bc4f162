//! Carrier billing in ask mode (issue 18), end to end: a real server, a
//! carrier in ask mode (the default) whose lease records stay in the
//! simulated carrier's own table, beside a carrier in push mode that
//! reports its leases. A shop names the payer by address and port; the
//! server asks the carrier over its relay stream and the charge lands on
//! the phone bill. Every way asking can fail is named here, and after the
//! flow the store is opened and searched: no lease or address record of
//! the ask-mode carrier is in it.

mod common;

use common::{by_ip, now_ms, refusal, trade_state as state};

use std::time::{Duration, Instant};

use common::backends::{backends, BackendFactory, Fsync};
use common::manual_carrier::ManualCarrier;
use common::{enroll_with_key, TestServer};
use syncpay::client::AuthedChannel;
use syncpay::domain::{IpKey, ShopId, SubscriberNumber};
use syncpay::proto::carrier_service_client::CarrierServiceClient;
use syncpay::proto::register_service_client::RegisterServiceClient;
use syncpay::proto::{self, relay_down, relay_up, FailureReason as FR, TradeState as S};
use syncpay::sync_server::limits::RESOLVE_TIMEOUT;
use syncpay::sync_server::refusal::{NETWORK_CARRIER_UNAVAILABLE, NETWORK_MISS, NETWORK_NOT_ACCEPTED};
use syncpay::terminal_sim::{CarrierSim, Policy, ResolvePolicy};
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);
/// docomo (ask mode), carrier-billed, cap 10 000 JPY.
const ALICE: &str = "+818020000001";
/// docomo (ask mode), carrier-billed, cap 10 000 JPY.
const BOB: &str = "+818020000002";
/// kddi (push mode), carrier-billed, cap 10 000 JPY.
const KEN: &str = "+818030000001";
/// The ask-mode carrier's addresses in this suite.
const ASK_ADDRESSES: [&str; 3] = ["198.51.100.7", "198.51.100.9", "2001:db8:1::42"];
/// The push-mode carrier's leased address.
const PUSH_ADDRESS: &str = "203.0.113.5";

struct World {
    t: TestServer,
    shop: RegisterServiceClient<AuthedChannel>,
    other_shop: RegisterServiceClient<AuthedChannel>,
    docomo: CarrierServiceClient<AuthedChannel>,
    register_id: String,
    other_register_id: String,
    /// The ask-mode carrier, with its own lease table.
    ask_sim: CarrierSim,
    /// The push-mode carrier.
    push_sim: CarrierSim,
    /// A little in the past, so every lease time is.
    base: i64,
}

async fn bill(carrier: &mut CarrierServiceClient<AuthedChannel>, number: &str) {
    carrier
        .enroll_subscriber(proto::EnrollSubscriberRequest {
            subscriber_number: number.into(),
            funding: proto::Funding::CarrierBill as i32,
            bill_currency: "JPY".into(),
            monthly_cap_minor: 10_000,
        })
        .await
        .expect("billing");
}

async fn world(backend: &'static BackendFactory) -> World {
    let t = TestServer::start_on(backend).await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let other_token = t.create_shop("other", "Other Shop").await;
    let mut admin = t.admin().await;
    // No resolve mode named: a new carrier asks (the default).
    let docomo_token = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "docomo".into(),
            display_name: "Docomo".into(),
            ip_prefixes: vec!["198.51.100.0/24".into(), "2001:db8:1::/48".into()],
            fee_bps: 250,
            ..Default::default()
        })
        .await
        .expect("docomo")
        .into_inner()
        .token;
    let kddi_token = admin
        .create_carrier(proto::CreateCarrierRequest {
            carrier_id: "kddi".into(),
            display_name: "KDDI".into(),
            ip_prefixes: vec!["203.0.113.0/24".into()],
            fee_bps: 0,
            resolve_mode: proto::ResolveMode::Push as i32,
        })
        .await
        .expect("kddi")
        .into_inner()
        .token;
    let ask_sim = CarrierSim::start(t.channel().await, &docomo_token).expect("docomo sim");
    let push_sim = CarrierSim::start(t.channel().await, &kddi_token).expect("kddi sim");
    for n in [ALICE, BOB] {
        ask_sim.add_handset(n, Policy::Approve).await.expect("handset");
    }
    push_sim.add_handset(KEN, Policy::Approve).await.expect("handset");
    let mut docomo = t.carrier(&docomo_token).await;
    let mut kddi = t.carrier(&kddi_token).await;
    for n in [ALICE, BOB] {
        bill(&mut docomo, n).await;
    }
    bill(&mut kddi, KEN).await;
    ask_sim.wait_connected(WAIT).await.expect("docomo relay");
    push_sim.wait_connected(WAIT).await.expect("kddi relay");
    for c in [&mut docomo, &mut kddi] {
        c.accept_shop(proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect("accept");
    }
    let base = now_ms() - 3_600_000;
    let at = u64::try_from(base).expect("positive");
    // docomo's leases stay in its own table.
    ask_sim.lease(ASK_ADDRESSES[0], (0, 0), ALICE, at).expect("lease");
    ask_sim.lease(ASK_ADDRESSES[1], (1024, 2047), BOB, at).expect("lease");
    ask_sim.lease(ASK_ADDRESSES[2], (0, 0), BOB, at).expect("lease");
    // kddi pushes its lease to the server.
    let start = proto::LeaseStart {
        ip: PUSH_ADDRESS.into(),
        port_lo: 0,
        port_hi: 0,
        subscriber_number: KEN.into(),
        start_ms: base,
    };
    kddi.report_leases(proto::ReportLeasesRequest { starts: vec![start], stops: vec![] }).await.expect("kddi leases");
    let mut shop = t.shop(&shop_token).await;
    let mut other_shop = t.shop(&other_token).await;
    let open = |label: &str| proto::OpenRegisterRequest { label: label.into() };
    let register_id = shop.open_register(open("web")).await.expect("register").into_inner().register_id;
    let other_register_id = other_shop.open_register(open("web")).await.expect("register").into_inner().register_id;
    World { t, shop, other_shop, docomo, register_id, other_register_id, ask_sim, push_sim, base }
}

fn pseudonym(t: &TestServer, number: &str) -> String {
    let shop = ShopId::parse("acme").expect("shop");
    t.config.secret.payer_pseudonym(&shop, &SubscriberNumber::parse(number).expect("number"))
}

impl World {
    async fn pay(&mut self, ip: &str, port: u32, amount: u64) -> proto::Trade {
        let request = by_ip(&self.register_id, amount, ip, port, self.base + 10);
        let created = self.shop.create_trade(request).await.expect("create").into_inner();
        if state(&created).0 != S::Pending {
            return created;
        }
        let request = proto::AwaitTradeRequest { trade_id: created.trade_id.clone(), wait_ms: 15_000 };
        self.shop.await_trade(request).await.expect("await").into_inner()
    }

    async fn refused(&mut self, ip: &str, port: u32) -> (Code, String) {
        refusal(self.shop.create_trade(by_ip(&self.register_id, 1_000, ip, port, self.base + 10)).await)
    }

    async fn trades(&self) -> u64 {
        self.t.assert_ledger_ok().await.trades_checked
    }
}

/// Every occurrence of `needle` in `blob`.
fn contains(blob: &[u8], needle: &[u8]) -> bool {
    blob.windows(needle.len()).any(|w| w == needle)
}

/// The forms an address could take in a store or on the wire: its text,
/// its 16-byte key (IPv4-mapped), and for IPv4 its 4 bytes.
fn address_forms(ip: &str) -> Vec<Vec<u8>> {
    let key = IpKey::parse(ip).expect("address");
    let mut forms = vec![ip.as_bytes().to_vec(), key.0.to_vec()];
    if key.is_v4() {
        forms.push(key.0[12..].to_vec());
    }
    forms
}

#[tokio::test]
async fn ask_mode_charges_the_bill_by_address_and_port_and_stores_no_lease() {
    for backend in backends() {
        ask_mode_charges_the_bill_by_address_and_port_and_stores_no_lease_on(backend).await;
    }
}

async fn ask_mode_charges_the_bill_by_address_and_port_and_stores_no_lease_on(backend: &'static BackendFactory) {
    let mut w = world(backend).await;
    // The ask-mode carrier cannot push leases: nothing of it is stored.
    let start = proto::LeaseStart {
        ip: ASK_ADDRESSES[0].into(),
        port_lo: 0,
        port_hi: 0,
        subscriber_number: ALICE.into(),
        start_ms: w.base,
    };
    let s = w
        .docomo
        .report_leases(proto::ReportLeasesRequest { starts: vec![start], stops: vec![] })
        .await
        .expect_err("ask mode");
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().starts_with("starts[0]: this carrier resolves addresses itself (ask mode)"), "{s:?}");

    let mut seen = Vec::new();
    for (ip, port, who) in [(ASK_ADDRESSES[0], 0, ALICE), (ASK_ADDRESSES[1], 1500, BOB), (ASK_ADDRESSES[2], 0, BOB)] {
        let t = w.pay(ip, port, 1_000).await;
        assert_eq!(state(&t), (S::Settled, FR::Unspecified), "{ip} {port}");
        assert_eq!(t.payer_pseudonym, pseudonym(&w.t, who), "{ip} {port} should resolve to {who}");
        seen.push(t);
    }
    assert_eq!(w.ask_sim.counters().resolves_received, 3, "one resolve request per trade");
    // The push-mode carrier's address is resolved from its pushed lease,
    // and neither carrier hears of the other's trades.
    let ken = w.pay(PUSH_ADDRESS, 0, 1_000).await;
    assert_eq!(state(&ken), (S::Settled, FR::Unspecified));
    assert_eq!(ken.payer_pseudonym, pseudonym(&w.t, KEN));
    seen.push(ken);
    assert_eq!(w.push_sim.counters().resolves_received, 0);
    assert_eq!(w.ask_sim.counters().resolves_received, 3);

    // On the bill, within the cap, with the fee: as in push mode.
    assert_eq!(w.t.balance(&format!("bill:docomo:{ALICE}:JPY")).await, -1_000);
    assert_eq!(w.t.balance(&format!("bill:docomo:{BOB}:JPY")).await, -2_000);
    assert_eq!(w.t.balance(&format!("bill:kddi:{KEN}:JPY")).await, -1_000);
    assert_eq!(w.t.balance("carrier:docomo:fees:JPY").await, 75);
    let month = syncpay::domain::Month::of(syncpay::domain::UnixMs(u64::try_from(now_ms()).expect("positive")));
    let statement = w
        .docomo
        .get_statement(proto::GetStatementRequest {
            subscriber_number: BOB.into(),
            month: month.to_string(),
            ..Default::default()
        })
        .await
        .expect("statement")
        .into_inner();
    assert_eq!(statement.total_minor, 2_000);
    assert_eq!(
        statement.lines.iter().map(|l| l.trade_id.as_str()).collect::<Vec<_>>(),
        [seen[1].trade_id.as_str(), seen[2].trade_id.as_str()]
    );

    // The privacy walk: nothing the shop received names a subscriber or an
    // address (text or bytes), in trades, events or the payout report.
    let bytes = common::everything_the_shop_received(&mut w.shop, &seen).await;
    let numbers: Vec<Vec<u8>> =
        [ALICE, BOB, KEN].iter().flat_map(|n| [n.as_bytes().to_vec(), n.as_bytes()[3..].to_vec()]).collect();
    let addresses: Vec<Vec<u8>> = ASK_ADDRESSES.iter().chain([&PUSH_ADDRESS]).flat_map(|a| address_forms(a)).collect();
    for blob in &bytes {
        for f in numbers.iter().chain(&addresses) {
            assert!(!contains(blob, f), "the shop saw {:?}", String::from_utf8_lossy(f));
        }
    }
    w.t.assert_ledger_ok().await;

    // After the flow: the store holds kddi's pushed lease and nothing of
    // docomo's addresses, in any tree, key or value.
    let World { t, ask_sim, push_sim, .. } = w;
    ask_sim.shutdown().await.expect("sim");
    push_sim.shutdown().await.expect("sim");
    let store_dir = t.config.store_dir.clone();
    t.server.shutdown().await.expect("shutdown");
    if backend.name == "sled" {
        // As the store opened them (sled refuses another segment size).
        let conf = std::fs::read(store_dir.join("conf")).expect("conf");
        let segment_size = String::from_utf8_lossy(&conf)
            .lines()
            .find_map(|l| l.strip_prefix("segment_size: ").and_then(|v| v.trim().parse::<usize>().ok()))
            .expect("segment size");
        let db =
            sled::Config::new().path(&store_dir).segment_size(segment_size).open().expect("open the store's files");
        let (mut ask_found, mut push_found) = (Vec::new(), 0usize);
        for name in db.tree_names() {
            let tree = db.open_tree(&name).expect("tree");
            for item in tree.iter() {
                let (k, v) = item.expect("record");
                for blob in [&k[..], &v[..]] {
                    for a in ASK_ADDRESSES {
                        // 4 bytes could occur by chance in random ids;
                        // the text and the 16-byte key cannot.
                        for f in address_forms(a).iter().take(2) {
                            if contains(blob, f) {
                                ask_found.push((String::from_utf8_lossy(&name).into_owned(), a));
                            }
                        }
                    }
                    push_found += usize::from(contains(blob, &IpKey::parse(PUSH_ADDRESS).expect("ip").0));
                }
            }
        }
        assert!(ask_found.is_empty(), "ask-mode addresses stored: {ask_found:?}");
        assert!(push_found >= 1, "the scan finds the pushed lease (so it could have found the others)");
    }
    let store = (backend.open)(&store_dir, Fsync::Off);
    assert_eq!(store.lease_count().await.expect("count"), 1, "only the push-mode carrier's lease is stored");
    for a in ASK_ADDRESSES {
        let key = IpKey::parse(a).expect("ip");
        for port in [None, Some(1500)] {
            assert_eq!(store.lease_holder(key, port, syncpay::domain::UnixMs(u64::MAX / 2)).await.expect("look"), None);
        }
    }
}

#[tokio::test]
async fn every_way_asking_can_fail_is_named_and_tells_the_shop_nothing() {
    for backend in backends() {
        every_way_asking_can_fail_is_named_and_tells_the_shop_nothing_on(backend).await;
    }
}

async fn every_way_asking_can_fail_is_named_and_tells_the_shop_nothing_on(backend: &'static BackendFactory) {
    let mut w = world(backend).await;
    let trades = w.trades().await;
    let miss = NETWORK_MISS.to_owned();
    // The push-mode miss, for comparison: the same message byte for byte.
    assert_eq!(w.refused("203.0.113.77", 0).await, (Code::FailedPrecondition, miss.clone()));

    // The carrier's own answers: no one, or a refusal of the shop.
    assert_eq!(w.refused("198.51.100.250", 0).await, (Code::FailedPrecondition, miss.clone()), "carrier: MISS");
    assert_eq!(w.refused(ASK_ADDRESSES[1], 0).await, (Code::FailedPrecondition, miss.clone()), "CGNAT, no port");
    w.ask_sim.refuse_shop("acme", true).expect("refuse");
    assert_eq!(w.refused(ASK_ADDRESSES[0], 0).await, (Code::FailedPrecondition, miss.clone()), "carrier: REFUSED");
    w.ask_sim.refuse_shop("acme", false).expect("accept again");

    // A shop the carrier has not accepted at the server: refused as in
    // push mode, and the carrier is not even asked.
    let asked = w.ask_sim.counters().resolves_received;
    let other = by_ip(&w.other_register_id, 1_000, ASK_ADDRESSES[0], 0, w.base + 10);
    assert_eq!(
        refusal(w.other_shop.create_trade(other).await),
        (Code::FailedPrecondition, NETWORK_NOT_ACCEPTED.into())
    );
    assert_eq!(w.ask_sim.counters().resolves_received, asked, "an unaccepted shop's request reaches no carrier");

    // Answers the server refuses: another carrier's subscriber, a number
    // nobody enrolled, FOUND without a number.
    for policy in [
        ResolvePolicy::WrongSubscriber(SubscriberNumber::parse(KEN).expect("number")),
        ResolvePolicy::WrongSubscriber(SubscriberNumber::parse("+818099999999").expect("number")),
        ResolvePolicy::Malformed,
    ] {
        w.ask_sim.set_resolve_policy(policy.clone());
        assert_eq!(w.refused(ASK_ADDRESSES[0], 0).await, (Code::FailedPrecondition, miss.clone()), "{policy:?}");
    }

    // No answer: the shop waits the resolve timeout, then the same miss.
    w.ask_sim.set_resolve_policy(ResolvePolicy::Silent);
    let started = Instant::now();
    assert_eq!(w.refused(ASK_ADDRESSES[0], 0).await, (Code::FailedPrecondition, miss.clone()), "silent");
    let waited = started.elapsed();
    assert!(waited >= RESOLVE_TIMEOUT - Duration::from_millis(100), "gave up after {waited:?}");

    // A late answer: the miss, then the answer arrives and changes nothing.
    w.ask_sim.set_resolve_policy(ResolvePolicy::Slow(RESOLVE_TIMEOUT + Duration::from_millis(700)));
    let answered = w.ask_sim.counters().resolves_answered;
    assert_eq!(w.refused(ASK_ADDRESSES[0], 0).await, (Code::FailedPrecondition, miss.clone()), "late");
    w.ask_sim.wait_for_counters(WAIT, |c| c.resolves_answered > answered).await.expect("the late answer went out");
    assert_eq!(w.trades().await, trades, "no refusal and no late answer created a trade");

    // Slow but in time: the trade settles.
    w.ask_sim.set_resolve_policy(ResolvePolicy::Slow(Duration::from_millis(300)));
    let slow = w.pay(ASK_ADDRESSES[0], 0, 100).await;
    assert_eq!(state(&slow), (S::Settled, FR::Unspecified));

    // An answer sent twice: one trade, settled once.
    w.ask_sim.set_resolve_policy(ResolvePolicy::Twice);
    let answered = w.ask_sim.counters().resolves_answered;
    let twice = w.pay(ASK_ADDRESSES[0], 0, 100).await;
    assert_eq!(state(&twice), (S::Settled, FR::Unspecified));
    assert_eq!(w.ask_sim.counters().resolves_answered, answered + 2);
    assert_eq!(w.trades().await, trades + 2);
    assert_eq!(w.t.balance(&format!("bill:docomo:{ALICE}:JPY")).await, -200);

    // The relay stream breaks while the request waits: UNAVAILABLE, at
    // once (no timeout), and a retry after the reconnect settles.
    w.ask_sim.set_resolve_policy(ResolvePolicy::Disconnect);
    let started = Instant::now();
    assert_eq!(w.refused(ASK_ADDRESSES[0], 0).await, (Code::Unavailable, NETWORK_CARRIER_UNAVAILABLE.into()));
    assert!(started.elapsed() < RESOLVE_TIMEOUT, "the broken stream failed the request without waiting");
    w.ask_sim.set_resolve_policy(ResolvePolicy::Answer);
    w.ask_sim.wait_for_counters(WAIT, |c| c.connections >= 2).await.expect("reconnected");
    w.ask_sim.wait_connected(WAIT).await.expect("connected");
    let retried = w.pay(ASK_ADDRESSES[0], 0, 100).await;
    assert_eq!(state(&retried), (S::Settled, FR::Unspecified));

    // The carrier not connected at all: UNAVAILABLE, retryable. The push
    // carrier's trades do not depend on its relay for resolving.
    let World { t, mut shop, register_id, ask_sim, push_sim, base, .. } = w;
    ask_sim.shutdown().await.expect("sim");
    let r = shop.create_trade(by_ip(&register_id, 1_000, ASK_ADDRESSES[0], 0, base + 10)).await;
    assert_eq!(refusal(r), (Code::Unavailable, NETWORK_CARRIER_UNAVAILABLE.into()));
    let ken = shop.create_trade(by_ip(&register_id, 1_000, PUSH_ADDRESS, 0, base + 10)).await.expect("push trade");
    assert_eq!(state(&ken.into_inner()).0, S::Pending);
    push_sim.shutdown().await.expect("sim");
    t.assert_ledger_ok().await;
}

/// The next resolve request on a hand-driven relay, with its delivery id.
async fn next_request(relay: &mut ManualCarrier) -> (u64, proto::ResolveRequest) {
    relay
        .find(|m| match &m.body {
            Some(relay_down::Body::Resolve(r)) => Some((m.delivery_id, r.clone())),
            _ => None,
        })
        .await
        .expect("a resolve request")
}

/// A carrier sees only requests for its own prefixes, and its answers
/// count only for its own requests: answering another carrier's request
/// id (ids are not secret) changes nothing and earns no reply.
#[tokio::test]
async fn a_carrier_can_answer_only_its_own_requests() {
    const ANN: &str = "+818040000001";
    let t = TestServer::start().await;
    let shop_token = t.create_shop("acme", "Acme Books").await;
    let mut admin = t.admin().await;
    let mut tokens = Vec::new();
    for (id, prefix) in [("alpha", "198.51.100.0/24"), ("beta", "203.0.113.0/24")] {
        let created = admin
            .create_carrier(proto::CreateCarrierRequest {
                carrier_id: id.into(),
                display_name: id.into(),
                ip_prefixes: vec![prefix.into()],
                ..Default::default()
            })
            .await
            .expect("carrier")
            .into_inner();
        tokens.push(created.token);
    }
    let mut alpha = t.carrier(&tokens[0]).await;
    let beta = t.carrier(&tokens[1]).await;
    enroll_with_key(&mut alpha, ANN, &ed25519_dalek::SigningKey::from_bytes(&[9; 32])).await;
    alpha.accept_shop(proto::AcceptShopRequest { shop_id: "acme".into() }).await.expect("accept");
    let mut alpha_relay = ManualCarrier::connect(alpha.clone()).await;
    let mut beta_relay = ManualCarrier::connect(beta).await;
    let mut shop = t.shop(&shop_token).await;
    let register_id = shop
        .open_register(proto::OpenRegisterRequest { label: "web".into() })
        .await
        .expect("register")
        .into_inner()
        .register_id;
    let observed = now_ms() - 1_000;
    let ask = |shop: &RegisterServiceClient<AuthedChannel>| {
        let mut shop = shop.clone();
        let request = by_ip(&register_id, 700, "198.51.100.7", 4711, observed);
        tokio::spawn(async move { shop.create_trade(request).await })
    };
    let answer = |request_id: u64, outcome: proto::ResolveOutcome, number: &str| {
        relay_up::Body::Resolved(proto::ResolveAnswer {
            request_id,
            outcome: outcome as i32,
            subscriber_number: number.into(),
        })
    };

    // First request: beta forges FOUND for it; then alpha answers MISS. Had
    // beta's answer counted, a trade would exist; the shop gets the miss.
    let first = ask(&shop);
    let (delivery_id, r) = next_request(&mut alpha_relay).await;
    // The request carries the address, port, time and shop, nothing more.
    assert_eq!(delivery_id, 0, "resolve requests are not outbox deliveries");
    assert_eq!(
        (r.ip.as_str(), r.port, r.observed_at_ms, r.shop_id.as_str()),
        ("198.51.100.7", 4711, observed, "acme"),
        "{r:?}"
    );
    beta_relay.send(answer(r.request_id, proto::ResolveOutcome::Found, ANN)).await;
    // Give beta's answer time to be read before alpha's (if it is read
    // later, it is ignored anyway: the test cannot fail wrongly).
    tokio::time::sleep(Duration::from_millis(300)).await;
    alpha_relay.send(answer(r.request_id, proto::ResolveOutcome::Miss, "")).await;
    let miss = tokio::time::timeout(WAIT, first).await.expect("answered").expect("task");
    assert_eq!(refusal(miss), (Code::FailedPrecondition, NETWORK_MISS.into()));

    // Second request: alpha answers FOUND, twice; then beta repeats it.
    // The first answer counts, and makes one trade.
    let second = ask(&shop);
    let (_, r) = next_request(&mut alpha_relay).await;
    alpha_relay.send(answer(r.request_id, proto::ResolveOutcome::Found, ANN)).await;
    alpha_relay.send(answer(r.request_id, proto::ResolveOutcome::Found, ANN)).await;
    beta_relay.send(answer(r.request_id, proto::ResolveOutcome::Found, ANN)).await;
    let created = tokio::time::timeout(WAIT, second).await.expect("answered").expect("task").expect("created");
    let created = created.into_inner();
    assert_eq!(state(&created).0, S::Pending);
    assert_eq!(created.payer_pseudonym, pseudonym(&t, ANN));
    let (_, offer) = alpha_relay.offer(&created.trade_id).await;
    assert_eq!(offer.subscriber_number, ANN);
    // beta saw no request and got nothing back for its forged answers.
    let beta_saw = beta_relay.drain();
    assert!(beta_saw.is_empty(), "beta received {beta_saw:?}");
    assert_eq!(t.assert_ledger_ok().await.trades_checked, 1, "one trade, whatever the repeats");
}
