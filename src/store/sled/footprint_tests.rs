//! Disk footprint per settled trade (issue 6), measured on a real store:
//! runs the bench's trade life (create, ack, approve) through the writer in
//! groups of 64 and prints, every 10 000 trades, the folder's allocated
//! bytes, the bytes the process wrote and its CPU per trade, then each
//! tree's live bytes (keys + values) per trade. Runs only with `SYNCPAY_FOOTPRINT=<trades>` (it is a
//! measurement, not a check): `SYNCPAY_FOOTPRINT=50000 cargo test --release
//! --lib footprint -- --nocapture`.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::SigningKey;

use super::*;
use crate::domain::receipt::ReceiptSigner;
use crate::domain::{Amount, Currency, Decision, TradeState};
use crate::store::fixture::{sign, Fixture};
use crate::store::{Funding, PayerRef, Store, TradeRequest};

const T0: UnixMs = UnixMs(1_800_000_000_000);

fn wchar() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("io");
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).expect("wchar")
}

/// CPU seconds of this process so far (user + system).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

/// Bytes allocated under `dir` (blocks, as `syncpay bench` counts them).
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).expect("read dir").flatten() {
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.blocks() * 512;
            }
        }
    }
    total
}

fn live_bytes(store: &SledStore) -> Vec<(&'static str, u64, u64)> {
    tx::TREE_NAMES
        .iter()
        .zip(store.shared.trees.iter())
        .map(|(name, tree)| {
            let (mut n, mut bytes) = (0u64, 0u64);
            for item in tree.iter() {
                let (k, v) = item.expect("read");
                n += 1;
                bytes += (k.len() + v.len()) as u64;
            }
            (*name, n, bytes)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn footprint_per_settled_trade() {
    let Some(total) = std::env::var("SYNCPAY_FOOTPRINT").ok().and_then(|v| v.parse::<u64>().ok()) else {
        return;
    };
    // `SYNCPAY_FOOTPRINT_OPEN=1`: stop each trade once its offer is
    // acknowledged (OFFERED), to see what an open trade keeps.
    let open_only = std::env::var_os("SYNCPAY_FOOTPRINT_OPEN").is_some();
    let shops_n: usize = std::env::var("SYNCPAY_FOOTPRINT_SHOPS").ok().and_then(|v| v.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().expect("tempdir");
    let sled = SledStore::open(StoreConfig::new(dir.path())).expect("open");
    let store: Store = Arc::new(sled.clone());
    let jpy = Currency::parse("JPY").expect("known");
    let fixture = Fixture::new(store.clone(), T0);
    let carrier = fixture.carrier("bench-carrier-1", "Bench Mobile", &[], 0).await;
    let signer = Arc::new(ReceiptSigner::from_seed([77; 32], T0));
    let mut shops = Vec::new();
    for i in 0..shops_n {
        let shop = fixture.shop(&format!("bench-1-shop-{i}"), &format!("Bench shop {i}")).await;
        let register = fixture.register(&shop, "bench").await;
        shops.push((shop, register));
    }
    let mut handsets = Vec::new();
    for i in 0..256u32 {
        let number = SubscriberNumber::parse(&format!("+8190{:08}", i + 1)).expect("number");
        let key = SigningKey::from_bytes(&[u8::try_from(i).expect("256 handsets"); 32]);
        fixture.payer(&carrier, &number, Funding::Wallet, &key).await;
        fixture.top_up(&number, 1 << 40, jpy).await;
        handsets.push((number, key));
    }
    let before = dir_bytes(dir.path());
    let wchar_before = wchar();
    let cpu_before = cpu_s();
    const BATCH: u64 = 64;
    let started = std::time::Instant::now();
    let mut done = 0u64;
    let mut report_at = 10_000u64;
    while done < total {
        let n = BATCH.min(total - done);
        let mut pending = Vec::new();
        for j in 0..n {
            let seq = done + j;
            let (shop, register) = &shops[(seq as usize) % shops.len()];
            let (payer, _) = &handsets[(seq as usize) % handsets.len()];
            let t = NewTrade {
                shop: shop.clone(),
                trade_id: TradeId::generate().expect("id"),
                request: TradeRequest {
                    register: *register,
                    payer: PayerRef::Number(payer.clone()),
                    amount: Amount::new(100 + seq % 900),
                    currency: jpy,
                    description: format!("bench {seq}"),
                    ttl_ms: 120_000,
                },
                idempotency_key: None,
                binding_code: "123456".into(),
                max_open_per_register: 10_000,
                offer_gate: None,
                asked: None,
                now: T0,
            };
            pending.push(sled.queue(create_trade::CreateTrade::new(t)).await.expect("queued"));
        }
        let mut created = Vec::new();
        for p in pending {
            let c = p.outcome().await.expect("create");
            let delivery_id = c.deliveries[0].delivery_id;
            created.push((c.trade, delivery_id))
        }
        let mut pending = Vec::new();
        for (_, delivery_id) in &created {
            pending.push(store.submit_ack(&carrier, *delivery_id, T0).await.expect("queued"));
        }
        for p in pending {
            p.outcome().await.expect("ack");
        }
        if open_only {
            done += n;
            continue;
        }
        let mut pending = Vec::new();
        for (j, (t, _)) in created.iter().enumerate() {
            let (_, key) = &handsets[((done + j as u64) as usize) % handsets.len()];
            let answer = HandsetAnswer {
                carrier: carrier.clone(),
                trade: t.id,
                decision: Decision::Approve,
                signature: sign(key, t, Decision::Approve),
                now: T0,
                checked: None,
                signer: signer.clone(),
            };
            pending.push(store.submit_answer(answer).await.expect("queued"));
        }
        for p in pending {
            let a = p.outcome().await.expect("answer");
            assert_eq!(a.trade.expect("trade").state, TradeState::Settled);
        }
        done += n;
        if !open_only && (done >= report_at || done == total) {
            let bytes = dir_bytes(dir.path()).saturating_sub(before);
            println!(
                "footprint: {done} trades, {:.1} s, folder {} B, {:.0} B/trade, written {:.0} B/trade, {:.0} us CPU/trade",
                started.elapsed().as_secs_f64(),
                bytes,
                bytes as f64 / done as f64,
                (wchar() - wchar_before) as f64 / done as f64,
                (cpu_s() - cpu_before) * 1e6 / done as f64
            );
            report_at += 10_000;
        }
    }
    let mut live_total = 0;
    for (name, n, bytes) in live_bytes(&sled) {
        live_total += bytes;
        if n > 0 {
            println!(
                "footprint: tree {name:12} {n:8} records {bytes:10} B live, {:.1} B/trade",
                bytes as f64 / total as f64
            );
        }
    }
    println!("footprint: live keys+values {:.1} B/trade", live_total as f64 / total as f64);
    for entry in std::fs::read_dir(dir.path()).expect("dir").flatten() {
        use std::os::unix::fs::MetadataExt;
        let meta = entry.metadata().expect("meta");
        println!("footprint: file {:?} len {} allocated {}", entry.file_name(), meta.len(), meta.blocks() * 512);
    }
    assert!(store.verify().await.expect("verify").ok());
}
