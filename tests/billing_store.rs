//! Network identity and carrier billing on the store itself, where the test
//! chooses every instant: lease resolution across reassignments, CGNAT port
//! blocks, IPv6, out-of-order and repeated reports, pruning; and a month of
//! mixed carrier-billed and wallet trades across month boundaries whose
//! caps, statements and payout entries must equal the ledger.
//!
//! `SYNCPAY_LEASE_BENCH=1 cargo test --release --test billing_store -- --nocapture lease_lookup_bench`
//! times lookups over a million lease records (skipped otherwise).

mod common;

use std::sync::Arc;

use common::backends::{backends, BackendFactory, Fsync};
use ed25519_dalek::{Signer, SigningKey};
use syncpay::domain::approval::ApprovalPayload;
use syncpay::domain::receipt::ReceiptSigner;
use syncpay::domain::{
    Amount, BindingCode, CarrierId, Currency, Decision, FailureReason, IpKey, Month, PayloadVersion, PortRange,
    RegisterId, ScreenText, ShopId, SubscriberNumber, TradeId, TradeState, UnixMs,
};
use syncpay::store::fixture::Fixture;
use syncpay::store::sled::{SledStore, StoreConfig};
use syncpay::store::{
    Funding, HandsetAnswer, LeaseList, LeaseRefusal, LeaseReport, LeasesRecorded, NewRefund, NewTrade, PayerRef,
    PayoutEntry, StatementRefusal, Store, StoreError, TradeRecord, TradeRequest,
};

/// 2026-01-31T23:59:59.000Z, one second before February.
const JAN_END: u64 = 1_769_903_999_000;
const FEB_START: u64 = JAN_END + 1_000;
const TTL_MS: u64 = 60_000;

fn jpy() -> Currency {
    Currency::parse("JPY").expect("known")
}
fn ip(text: &str) -> IpKey {
    IpKey::parse(text).expect("ip")
}
fn num(text: &str) -> SubscriberNumber {
    SubscriberNumber::parse(text).expect("number")
}

const BILLED: &str = "+818030000001";
const BILLED2: &str = "+818030000002";
const WALLET: &str = "+818030000003";

struct World {
    _dir: tempfile::TempDir,
    store: Store,
    shop: ShopId,
    carrier: CarrierId,
    register: RegisterId,
    keys: Vec<(SubscriberNumber, SigningKey)>,
}

async fn world(backend: &BackendFactory) -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    // These tests check logic, not durability: skip the fsync.
    let store = (backend.open)(dir.path(), Fsync::Off);
    world_on(dir, store).await
}

async fn world_on(dir: tempfile::TempDir, store: Store) -> World {
    let t0 = UnixMs(JAN_END - 86_400_000);
    let fixture = Fixture::new(store.clone(), t0);
    let shop = fixture.shop("acme", "Acme Books").await;
    let carrier = fixture.carrier("docomo", "Docomo", &["198.51.100.0/24", "10.0.0.0/8", "2001:db8:1::/48"], 250).await;
    let register = fixture.register(&shop, "r").await;
    fixture.accept(&carrier, &shop).await;
    let mut keys = Vec::new();
    for (i, (n, funding)) in [
        (BILLED, Funding::CarrierBill { currency: jpy(), monthly_cap: Amount::new(10_000) }),
        (BILLED2, Funding::CarrierBill { currency: jpy(), monthly_cap: Amount::new(3_000) }),
        (WALLET, Funding::Wallet),
    ]
    .into_iter()
    .enumerate()
    {
        let key = SigningKey::from_bytes(&[u8::try_from(i).expect("small") + 7; 32]);
        fixture.payer(&carrier, &num(n), funding, &key).await;
        keys.push((num(n), key));
    }
    fixture.top_up(&num(WALLET), 50_000, jpy()).await;
    World { _dir: dir, store, shop, carrier, register, keys }
}

fn start(addr: &str, lo: u16, hi: u16, who: &str, at: u64) -> LeaseReport {
    LeaseReport {
        ip: ip(addr),
        ports: PortRange::new(lo, hi).expect("ports"),
        at: UnixMs(at),
        subscriber: Some(num(who)),
        index: 0,
    }
}

fn stop(addr: &str, lo: u16, hi: u16, at: u64) -> LeaseReport {
    LeaseReport {
        ip: ip(addr),
        ports: PortRange::new(lo, hi).expect("ports"),
        at: UnixMs(at),
        subscriber: None,
        index: 0,
    }
}

impl World {
    async fn report(
        &self,
        starts: Vec<LeaseReport>,
        stops: Vec<LeaseReport>,
    ) -> Result<LeasesRecorded, StoreError<LeaseRefusal>> {
        self.store.report_leases(&self.carrier, starts, stops).await
    }

    async fn who(&self, addr: &str, port: Option<u16>, at: u64) -> Option<String> {
        self.store.lease_holder(ip(addr), port, UnixMs(at)).await.expect("lookup").map(|(c, n)| {
            assert_eq!(c, self.carrier);
            n.as_str().to_owned()
        })
    }

    async fn check(&self, addr: &str, port: Option<u16>, at: u64, expect: Option<&str>) {
        assert_eq!(self.who(addr, port, at).await.as_deref(), expect, "{addr} port {port:?} at {at}");
    }

    /// Creates a trade by number at `at` and answers it (approve) at `at`.
    async fn settle(&self, payer: &str, amount: u64, at: u64) -> TradeRecord {
        let trade_id = TradeId::generate().expect("id");
        let request = TradeRequest {
            register: self.register,
            payer: PayerRef::Number(num(payer)),
            amount: Amount::new(amount),
            currency: jpy(),
            description: String::new(),
            ttl_ms: TTL_MS,
        };
        let trade = self
            .store
            .create_trade(NewTrade {
                shop: self.shop.clone(),
                trade_id,
                request,
                idempotency_key: None,
                binding_code: "000000".into(),
                max_open_per_register: 100,
                offer_gate: None,
                asked: None,
                now: UnixMs(at),
            })
            .await
            .expect("create")
            .trade;
        assert_eq!(trade.state, TradeState::Pending, "{trade:?}");
        let key = &self.keys.iter().find(|(n, _)| n.as_str() == payer).expect("key").1;
        // As offered: shop "Acme Books", register "r", no description.
        let payload = ApprovalPayload {
            trade_id,
            amount: Amount::new(amount),
            currency: jpy(),
            shop_id: self.shop.clone(),
            register_id: self.register,
            expires_at: trade.expires_at,
            version: PayloadVersion::V2 {
                binding_code: BindingCode::parse("000000").expect("code"),
                screen_digest: ScreenText { shop_name: "Acme Books", register_label: "r", description: "" }.digest(),
            },
            decision: Decision::Approve,
        };
        let signature = key.sign(&payload.to_bytes()).to_bytes().to_vec();
        let answer = HandsetAnswer {
            carrier: self.carrier.clone(),
            trade: trade_id,
            decision: Decision::Approve,
            signature,
            now: UnixMs(at),
            checked: None,
            signer: Arc::new(ReceiptSigner::from_seed([9; 32], UnixMs(at))),
        };
        let outcome = self.store.submit_answer(answer).await.expect("queued").outcome().await.expect("answer");
        outcome.trade.expect("trade")
    }

    async fn refund(&self, trade: &TradeRecord, amount: u64, at: u64) {
        self.store
            .refund(NewRefund {
                shop: self.shop.clone(),
                trade: trade.id,
                amount: Amount::new(amount),
                idempotency_key: None,
                now: UnixMs(at),
            })
            .await
            .expect("refund");
    }

    async fn net(&self, name: &str) -> i128 {
        self.store
            .accounts(name, 10)
            .await
            .expect("accounts")
            .iter()
            .find(|a| a.name.key() == name)
            .map_or(0, |a| a.balance.net())
    }
}

#[tokio::test]
async fn leases_answer_who_held_an_address_and_port_at_an_instant() {
    for backend in backends() {
        leases_on(backend).await;
    }
}

async fn leases_on(backend: &BackendFactory) {
    let w = world(backend).await;
    let (a, b, c) = (BILLED, BILLED2, WALLET);
    // An address reassigned many times: A, nobody, B, then A again without
    // a stop (a later start supersedes).
    let mut starts = vec![start("198.51.100.7", 0, 65535, a, 1_000), start("198.51.100.7", 0, 65535, b, 3_000)];
    starts.push(start("198.51.100.7", 0, 65535, a, 5_000));
    for i in 0..50u64 {
        // Many reassignments later on, alternating holders.
        starts.push(start("198.51.100.7", 0, 65535, if i % 2 == 0 { b } else { c }, 10_000 + i * 100));
    }
    w.report(starts, vec![stop("198.51.100.7", 0, 65535, 2_000)]).await.expect("report");
    w.check("198.51.100.7", None, 999, None).await;
    w.check("198.51.100.7", None, 1_000, Some(a)).await;
    w.check("198.51.100.7", Some(443), 1_999, Some(a)).await;
    w.check("198.51.100.7", None, 2_000, None).await; // [start, end)
    w.check("198.51.100.7", None, 3_500, Some(b)).await;
    w.check("198.51.100.7", None, 9_999, Some(a)).await;
    w.check("198.51.100.7", None, 10_000, Some(b)).await;
    w.check("198.51.100.7", None, 10_150, Some(c)).await;
    w.check("198.51.100.7", None, 99_999, Some(c)).await;

    // CGNAT: two port blocks on one address at once, one block reassigned.
    w.report(
        vec![
            start("10.1.2.3", 1024, 2047, a, 1_000),
            start("10.1.2.3", 2048, 3071, b, 1_000),
            start("10.1.2.3", 1024, 2047, c, 4_000),
        ],
        vec![stop("10.1.2.3", 2048, 3071, 6_000)],
    )
    .await
    .expect("report");
    w.check("10.1.2.3", Some(1500), 2_000, Some(a)).await;
    w.check("10.1.2.3", Some(2048), 2_000, Some(b)).await;
    w.check("10.1.2.3", Some(1500), 4_000, Some(c)).await;
    w.check("10.1.2.3", Some(3071), 5_999, Some(b)).await;
    w.check("10.1.2.3", Some(3071), 6_000, None).await;
    w.check("10.1.2.3", Some(4000), 5_000, None).await; // outside every block
    w.check("10.1.2.3", None, 5_000, None).await; // the address alone names nobody

    // IPv6, and an IPv4 address written IPv4-mapped is the same key.
    w.report(vec![start("2001:db8:1::42", 0, 65535, b, 1_000), start("2001:db8:1::43", 0, 65535, a, 1_000)], vec![])
        .await
        .expect("report");
    w.check("2001:db8:1::42", Some(5), 1_500, Some(b)).await;
    w.check("2001:db8:1::43", None, 1_500, Some(a)).await;
    w.check("2001:db8:1::44", None, 1_500, None).await;
    w.check("::ffff:198.51.100.7", None, 3_500, Some(b)).await;

    // Out of order: the stop arrives before its start; then the same batch
    // twice (idempotent); a stop that matches nothing changes nothing.
    w.report(vec![], vec![stop("198.51.100.20", 0, 65535, 6_000)]).await.expect("stop first");
    w.check("198.51.100.20", None, 5_000, None).await;
    let late = || vec![start("198.51.100.20", 0, 65535, a, 4_000)];
    w.report(late(), vec![]).await.expect("late start");
    w.report(late(), vec![]).await.expect("repeat");
    w.report(vec![], vec![stop("198.51.100.21", 0, 65535, 1)]).await.expect("stray stop");
    w.check("198.51.100.20", None, 5_000, Some(a)).await;
    w.check("198.51.100.20", None, 6_000, None).await;

    // A carrier reports only inside its prefixes, for its own subscribers.
    let refused = w.report(vec![start("192.0.2.1", 0, 65535, a, 1)], vec![]).await;
    assert_eq!(
        refused.err(),
        Some(StoreError::Refused(LeaseRefusal::OutsidePrefixes { list: LeaseList::Starts, index: 0 }))
    );
    let stranger = w.report(vec![start("198.51.100.9", 0, 65535, "+819099999999", 1)], vec![]).await;
    assert_eq!(
        stranger.err(),
        Some(StoreError::Refused(LeaseRefusal::NotOwnSubscriber { list: LeaseList::Starts, index: 0 }))
    );

    // Pruning keeps every answer at or after the cutoff and drops the rest.
    let before = w.store.lease_count().await.expect("count");
    let deleted = w.store.prune_leases(UnixMs(10_000)).await.expect("prune");
    let after = w.store.lease_count().await.expect("count");
    assert!(deleted > 0 && after == before - usize::try_from(deleted).expect("fits"));
    w.check("198.51.100.7", None, 10_000, Some(b)).await;
    w.check("198.51.100.7", None, 10_150, Some(c)).await;
    w.check("10.1.2.3", Some(1500), 10_000, Some(c)).await;
    w.check("10.1.2.3", Some(3071), 10_000, None).await;
    w.check("2001:db8:1::42", None, 10_000, Some(b)).await;
    w.check("198.51.100.20", None, 10_000, None).await;
    assert_eq!(w.store.prune_leases(UnixMs(10_000)).await.expect("again"), 0);
    assert!(w.store.verify().await.expect("verify").ok());
}

#[tokio::test]
async fn a_month_of_bills_caps_statements_and_payouts_equals_the_ledger() {
    for backend in backends() {
        month_of_bills_on(backend).await;
    }
}

async fn month_of_bills_on(backend: &BackendFactory) {
    let w = world(backend).await;
    let jan = Month::of(UnixMs(JAN_END));
    let feb = Month::of(UnixMs(FEB_START));
    assert_eq!((jan.to_string().as_str(), feb.to_string().as_str()), ("2026-01", "2026-02"));

    // January: 6 000 + 3 999 fit the 10 000 cap; 2 more do not.
    let t1 = w.settle(BILLED, 6_000, JAN_END - 10_000).await;
    let t2 = w.settle(BILLED, 3_999, JAN_END - 5_000).await;
    let over = w.settle(BILLED, 2, JAN_END - 4_000).await;
    assert_eq!((t1.state, t2.state), (TradeState::Settled, TradeState::Settled));
    assert_eq!((over.state, over.failure), (TradeState::Failed, Some(FailureReason::SpendingCap)));
    let w1 = w.settle(WALLET, 700, JAN_END - 3_000).await;
    assert_eq!(w1.state, TradeState::Settled);
    // The last second of January still counts against January.
    let edge = w.settle(BILLED, 1, JAN_END).await;
    assert_eq!(edge.state, TradeState::Settled);
    // February has its own cap.
    let t3 = w.settle(BILLED, 9_000, FEB_START).await;
    assert_eq!(t3.state, TradeState::Settled);
    // A February refund of a January charge frees January's cap, not
    // February's: 2 000 more still does not fit February.
    w.refund(&t1, 2_500, FEB_START + 1_000).await;
    let feb_over = w.settle(BILLED, 2_000, FEB_START + 2_000).await;
    assert_eq!(feb_over.failure, Some(FailureReason::SpendingCap));
    w.refund(&t3, 1_000, FEB_START + 3_000).await;
    let t4 = w.settle(BILLED, 2_000, FEB_START + 4_000).await;
    assert_eq!(t4.state, TradeState::Settled);
    w.refund(&w1, 100, FEB_START + 5_000).await;
    // Another subscriber, another cap; a foreign currency has no cap.
    let t5 = w.settle(BILLED2, 3_000, FEB_START + 6_000).await;
    assert_eq!(t5.state, TradeState::Settled);

    // Statements: lines, refunds and totals per month of the charge.
    let jan_bill = w.store.statement(&w.carrier, &num(BILLED), jan).await.expect("jan");
    let amounts: Vec<(u64, u64)> = jan_bill.lines.iter().map(|l| (l.amount.minor(), l.refunded.minor())).collect();
    assert_eq!(amounts, vec![(6_000, 2_500), (3_999, 0), (1, 0)]);
    assert_eq!(jan_bill.usage.map(|u| u.used.minor()), Some(6_000 - 2_500 + 3_999 + 1));
    assert!(jan_bill.lines.iter().all(|l| l.shop_name == "Acme Books"));
    let fees: Vec<u64> = jan_bill.lines.iter().map(|l| l.fee.minor()).collect();
    assert_eq!(fees, vec![150, 99, 0]); // floor(2.5%): 99.975 → 99, 0.025 → 0
    let feb_bill = w.store.statement(&w.carrier, &num(BILLED), feb).await.expect("feb");
    let feb_total: u64 = feb_bill.lines.iter().map(|l| l.amount.minor() - l.refunded.minor()).sum();
    assert_eq!(feb_total, 9_000 - 1_000 + 2_000);
    assert_eq!(feb_bill.usage.map(|u| u.used.minor()), Some(feb_total));
    let jan_total: u64 = jan_bill.lines.iter().map(|l| l.amount.minor() - l.refunded.minor()).sum();
    // Across months the statements sum to what the bill account owes.
    assert_eq!(-w.net(&format!("bill:docomo:{BILLED}:JPY")).await, i128::from(jan_total + feb_total));
    assert_eq!(
        w.store.statement(&w.carrier, &num(WALLET), jan).await.err(),
        Some(StoreError::Refused(StatementRefusal::NotCarrierBilled))
    );

    // Payout entries per period equal the shop's payable postings in it.
    for (from, to) in [(0, FEB_START), (FEB_START, u64::MAX / 2), (JAN_END, FEB_START + 3_500), (0, u64::MAX / 2)] {
        let entries = w.store.payout_entries(&w.shop, UnixMs(from), UnixMs(to)).await.expect("entries");
        let mut net: i128 = 0;
        for e in &entries {
            net += match e {
                PayoutEntry::Settlement { gross, fee, .. } => i128::from(gross.minor()) - i128::from(fee.minor()),
                PayoutEntry::Refund { amount, .. } | PayoutEntry::Payout { amount, .. } => -i128::from(amount.minor()),
            };
        }
        let mut from_postings: i128 = 0;
        for p in w.store.postings(0, 10_000).await.expect("postings") {
            if p.account.key() == "shop:acme:JPY" && (from..to).contains(&p.at.0) {
                from_postings += match p.side {
                    syncpay::domain::Side::Credit => i128::from(p.amount.minor()),
                    syncpay::domain::Side::Debit => -i128::from(p.amount.minor()),
                };
            }
        }
        assert_eq!(net, from_postings, "period {from}..{to}");
    }
    let fees = w.net("carrier:docomo:fees:JPY").await;
    assert_eq!(fees, 150 + 99 + 225 + 50 + 75);
    let report = w.store.verify().await.expect("verify");
    assert!(report.ok(), "{:#?}", report.violations);
}

/// Lease lookups over a million records against a plain point read of the
/// same tree, in the same run. Opt in: `SYNCPAY_LEASE_BENCH=1` (use
/// `--release`; a debug build is ~10× slower throughout).
#[tokio::test]
async fn lease_lookup_bench() {
    if std::env::var_os("SYNCPAY_LEASE_BENCH").is_none() {
        return;
    }
    let total: u64 = std::env::var("SYNCPAY_LEASE_COUNT").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    // Against plain sled reads of the same tree: a sled benchmark.
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        StoreConfig { durability: syncpay::store::sled::Durability::FlushOnly, ..StoreConfig::new(dir.path()) };
    let sled = SledStore::open(config).expect("open");
    let w = world_on(dir, Arc::new(sled.clone())).await;
    let subs = [BILLED, BILLED2, WALLET];
    // 10.0.0.0/8: 62 500 addresses, each with 16 records: 8 whole-address
    // reassignments, then 4 CGNAT blocks reassigned twice.
    let per_addr = 16u64;
    let addrs = total / per_addr;
    let addr = |i: u64| format!("10.{}.{}.{}", (i >> 16) & 0xff, (i >> 8) & 0xff, i & 0xff);
    let started = std::time::Instant::now();
    let mut batch = Vec::new();
    let mut pending = Vec::new();
    for i in 0..addrs {
        let a = addr(i);
        for r in 0..8u64 {
            batch.push(start(&a, 0, 65535, subs[usize::try_from((i + r) % 3).expect("small")], 1_000 + r * 1_000));
        }
        for r in 0..8u64 {
            let block = u16::try_from(r % 4).expect("small") * 1024 + 1024;
            batch.push(start(
                &a,
                block,
                block + 1023,
                subs[usize::try_from(r % 3).expect("small")],
                10_000 + r * 1_000,
            ));
        }
        if batch.len() >= 1000 {
            // Up to 16 batches in flight, so the writer groups them.
            let (store, carrier, starts) = (w.store.clone(), w.carrier.clone(), std::mem::take(&mut batch));
            pending.push(tokio::spawn(async move { store.report_leases(&carrier, starts, vec![]).await }));
            if pending.len() >= 16 {
                for p in pending.drain(..) {
                    p.await.expect("task").expect("report");
                }
            }
        }
    }
    w.store.report_leases(&w.carrier, batch, vec![]).await.expect("report");
    for p in pending {
        p.await.expect("task").expect("report");
    }
    let loaded = started.elapsed();
    let records = w.store.lease_count().await.expect("count");
    let lookups = 200_000u64;
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let keys: Vec<(IpKey, u16, u64)> = (0..lookups)
        .map(|_| {
            let r = next();
            (ip(&addr(r % addrs)), u16::try_from(1024 + (r >> 20) % 4096).expect("port"), (r >> 32) % 20_000)
        })
        .collect();
    let t = std::time::Instant::now();
    let mut found = 0u64;
    for (a, port, at) in &keys {
        found += u64::from(w.store.lease_holder(*a, Some(*port), UnixMs(*at)).await.expect("lookup").is_some());
    }
    let lookup = t.elapsed();
    let t = std::time::Instant::now();
    let mut hits = 0u64;
    for (a, _, at) in &keys {
        hits += u64::from(sled.lease_point_read(*a, UnixMs(*at), 0).expect("get"));
    }
    let get = t.elapsed();
    let per = |d: std::time::Duration| d.as_nanos() / u128::from(lookups);
    println!(
        "lease bench: {records} records loaded in {loaded:.1?}; {lookups} lookups: {} ns each ({found} found); \
         plain sled get: {} ns each ({hits} hits); ratio {:.2}",
        per(lookup),
        per(get),
        lookup.as_secs_f64() / get.as_secs_f64()
    );
    assert!(records >= usize::try_from(total).expect("fits") * 99 / 100);
}

/// Ask mode on the store (issue 18): the mode is a carrier's term, read
/// by `route`; a carrier in ask mode cannot store a lease; a trade whose
/// payer the engine learnt by asking uses that answer instead of a
/// lookup, still checked to be that carrier's subscriber with a handset,
/// and an idempotent retry is replayed before the answer is looked at.
#[tokio::test]
async fn ask_mode_stores_no_lease_and_takes_the_carriers_answer_as_checked() {
    for backend in backends() {
        ask_mode_on(backend).await;
    }
}

async fn ask_mode_on(backend: &BackendFactory) {
    use syncpay::domain::ResolveMode;
    use syncpay::store::{CreateTradeRefusal, Resolution, Route};
    let w = world(backend).await;
    let fixture = Fixture::new(w.store.clone(), UnixMs(JAN_END));
    let kddi = fixture.carrier("kddi", "KDDI", &["203.0.113.0/24"], 0).await;
    const KEN: &str = "+818040000001";
    fixture.payer(&kddi, &num(KEN), Funding::Wallet, &SigningKey::from_bytes(&[40; 32])).await;
    let route = |addr: &str| {
        let store = w.store.clone();
        let shop = w.shop.clone();
        let addr = ip(addr);
        async move { store.route(addr, &shop).await.expect("route") }
    };
    assert_eq!(route("192.0.2.1").await, None);
    assert_eq!(
        route("198.51.100.7").await,
        Some(Route { carrier: w.carrier.clone(), mode: ResolveMode::Push, accepted: true })
    );
    assert_eq!(
        route("203.0.113.5").await,
        Some(Route { carrier: kddi.clone(), mode: ResolveMode::Push, accepted: false })
    );
    assert_eq!(w.store.set_resolve_mode(&w.carrier, ResolveMode::Ask).await.expect("ask"), ResolveMode::Ask);
    assert_eq!(route("198.51.100.7").await.map(|r| r.mode), Some(ResolveMode::Ask));
    let before = w.store.lease_count().await.expect("count");
    assert_eq!(
        w.report(vec![], vec![stop("198.51.100.7", 0, 65535, JAN_END)]).await.err(),
        Some(StoreError::Refused(LeaseRefusal::AskMode { list: LeaseList::Stops, index: 0 }))
    );
    assert_eq!(w.report(vec![], vec![]).await.expect("empty"), LeasesRecorded { starts: 0, stops: 0 });
    assert_eq!(w.store.lease_count().await.expect("count"), before, "nothing stored in ask mode");

    let create = |asked: Resolution, key: Option<&str>| {
        let request = TradeRequest {
            register: w.register,
            payer: PayerRef::Network(syncpay::store::NetworkIdentity {
                ip: ip("198.51.100.7"),
                port: None,
                observed_at: UnixMs(JAN_END),
            }),
            amount: Amount::new(100),
            currency: jpy(),
            description: String::new(),
            ttl_ms: TTL_MS,
        };
        let trade = NewTrade {
            shop: w.shop.clone(),
            trade_id: TradeId::generate().expect("id"),
            request,
            idempotency_key: key.map(str::to_owned),
            binding_code: "000000".into(),
            max_open_per_register: 100,
            offer_gate: None,
            asked: Some(asked),
            now: UnixMs(JAN_END),
        };
        let store = w.store.clone();
        async move { store.create_trade(trade).await }
    };
    let refused = |r: Result<syncpay::store::Created, StoreError<CreateTradeRefusal>>| match r {
        Err(StoreError::Refused(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let found = |carrier: &CarrierId, n: &str| Resolution::Found { carrier: carrier.clone(), subscriber: num(n) };
    // Another carrier's subscriber, named as if the asked carrier's, or a
    // number nobody enrolled: the one miss.
    assert_eq!(refused(create(found(&w.carrier, KEN), None).await), CreateTradeRefusal::NoOneToOffer);
    assert_eq!(refused(create(found(&w.carrier, "+818099999999"), None).await), CreateTradeRefusal::NoOneToOffer);
    assert_eq!(refused(create(Resolution::Miss, None).await), CreateTradeRefusal::NoOneToOffer);
    assert_eq!(refused(create(Resolution::NotAccepted, None).await), CreateTradeRefusal::NotAccepted);
    assert_eq!(refused(create(Resolution::Unavailable, None).await), CreateTradeRefusal::CarrierUnavailable);
    // The carrier's own subscriber: a trade for them, keeping the number,
    // not the address.
    let made = create(found(&w.carrier, BILLED), Some("k1")).await.expect("created");
    assert_eq!((made.trade.state, made.trade.request.payer.as_str()), (TradeState::Pending, BILLED));
    // A retry is the original trade, whatever the carrier answers now.
    let again = create(Resolution::Unavailable, Some("k1")).await.expect("replayed");
    assert!(again.replayed);
    assert_eq!(again.trade.id, made.trade.id);
    assert_eq!(w.store.lease_count().await.expect("count"), before);
}
