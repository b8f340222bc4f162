//! Bank test, after Jepsen's: many concurrent trades and refunds among many
//! accounts while readers keep reading every balance. Every read must sum
//! to zero (double entry), wallets plus shops must hold exactly the money
//! put in, and no wallet may ever be below zero.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::backends::{backends, BackendFactory};
use common::TestServer;
use rand::{RngExt, SeedableRng};
use syncpay::domain::TradeId;
use syncpay::proto::{self, TradeState as S};
use syncpay::register::{ChargeRequest, VirtualRegister};
use syncpay::terminal_sim::{CarrierSim, Policy};

const SUBSCRIBERS: u64 = 16;
const TOP_UP: i64 = 5_000;
const SHOPS: usize = 3;
const WORKERS_PER_SHOP: usize = 3;
const OPS_PER_WORKER: usize = 15;

fn number(i: u64) -> String {
    format!("+8180400{i:05}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_of_all_balances_sums_to_the_money_put_in() {
    for backend in backends() {
        every_read_of_all_balances_sums_to_the_money_put_in_on(backend).await;
    }
}

async fn every_read_of_all_balances_sums_to_the_money_put_in_on(backend: &'static BackendFactory) {
    let seed: u64 = std::env::var("SYNCPAY_BANK_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("bank test seed {seed} (replay with SYNCPAY_BANK_SEED={seed})");
    let t = TestServer::start_on(backend).await;
    let carrier_token = t.create_carrier("docomo", "Docomo").await;
    let sim = CarrierSim::start(t.channel().await, &carrier_token).expect("sim");
    for i in 0..SUBSCRIBERS {
        // Most approve; a few decline so some trades end without money.
        let policy = if i % 5 == 4 { Policy::Decline } else { Policy::Approve };
        sim.add_handset(&number(i), policy).await.expect("handset");
        t.top_up(&number(i), u64::try_from(TOP_UP).expect("positive"), "JPY").await;
    }
    sim.wait_connected(Duration::from_secs(15)).await.expect("connected");
    let total_in = TOP_UP * i64::try_from(SUBSCRIBERS).expect("small");

    let stop = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut admin = t.admin().await;
        let (stop, reads) = (stop.clone(), reads.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let accounts = admin
                    .list_accounts(proto::ListAccountsRequest { prefix: String::new() })
                    .await
                    .expect("read")
                    .into_inner()
                    .accounts;
                let sum: i64 = accounts.iter().map(|a| a.balance_minor).sum();
                assert_eq!(sum, 0, "balances do not sum to zero: {accounts:?}");
                let held: i64 = accounts
                    .iter()
                    .filter(|a| a.name.starts_with("wallet:") || a.name.starts_with("shop:"))
                    .map(|a| a.balance_minor)
                    .sum();
                assert_eq!(held, total_in, "money appeared or vanished: {accounts:?}");
                for a in accounts.iter().filter(|a| a.name.starts_with("wallet:")) {
                    assert!(a.balance_minor >= 0, "wallet below zero: {a:?}");
                }
                reads.fetch_add(1, Ordering::SeqCst);
            }
        }));
    }

    let settled_total = Arc::new(AtomicU64::new(0));
    let refunded_total = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for s in 0..SHOPS {
        let token = t.create_shop(&format!("shop{s}"), &format!("Shop {s}")).await;
        for w in 0..WORKERS_PER_SHOP {
            let register = VirtualRegister::open(t.channel().await, &token, &format!("till {w}")).await.expect("open");
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ u64::try_from(s * 16 + w).expect("small"));
            let (settled_total, refunded_total) = (settled_total.clone(), refunded_total.clone());
            workers.push(tokio::spawn(async move {
                let mut mine: Vec<(TradeId, u64)> = Vec::new();
                for _ in 0..OPS_PER_WORKER {
                    if !mine.is_empty() && rng.random_range(0..4) == 0 {
                        let k = rng.random_range(0..mine.len());
                        let (id, left) = mine[k];
                        let amount = rng.random_range(1..=left.max(1));
                        match register.refund(id, amount, None).await {
                            Ok(_) => {
                                refunded_total.fetch_add(amount, Ordering::SeqCst);
                                mine[k].1 = left - amount;
                                if mine[k].1 == 0 {
                                    mine.swap_remove(k);
                                }
                            }
                            // The shop may have refunded too much elsewhere
                            // to cover it; anything else is a bug.
                            Err(e) => {
                                assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition), "{e:?}")
                            }
                        }
                        continue;
                    }
                    let payer = number(rng.random_range(0..SUBSCRIBERS));
                    let amount = rng.random_range(1..=2_500u64);
                    let trade = register
                        .charge(ChargeRequest { ttl_seconds: 30, ..ChargeRequest::new(&payer, amount, "JPY", "bank") })
                        .await
                        .expect("charge");
                    if trade.state == S::Settled as i32 {
                        settled_total.fetch_add(amount, Ordering::SeqCst);
                        mine.push((TradeId::parse(&trade.trade_id).expect("id"), amount));
                    }
                }
            }));
        }
    }
    for w in workers {
        w.await.expect("worker");
    }
    stop.store(true, Ordering::SeqCst);
    for r in readers {
        r.await.expect("reader");
    }
    let reads = reads.load(Ordering::SeqCst);
    assert!(reads >= 10, "the readers must actually have read while trades ran ({reads} reads)");
    let settled = settled_total.load(Ordering::SeqCst);
    assert!(settled > 0, "some trades must have settled");
    let mut shop_sum = 0;
    for s in 0..SHOPS {
        shop_sum += t.balance(&format!("shop:shop{s}:JPY")).await;
    }
    let net = i64::try_from(settled - refunded_total.load(Ordering::SeqCst)).expect("fits");
    assert_eq!(shop_sum, net, "shops hold exactly what settled minus what was refunded");
    let report = t.assert_ledger_ok().await;
    eprintln!(
        "bank test: {reads} consistent reads, {} trades checked, {} postings, settled {settled}, refunded {}",
        report.trades_checked,
        report.postings_checked,
        refunded_total.load(Ordering::SeqCst)
    );
    sim.shutdown().await.expect("sim stop");
}
