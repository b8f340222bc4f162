//! State the sled backend rebuilds when it opens instead of rewriting it in
//! every commit (issue 14) matches a full recomputation after a kill -9 at
//! a random moment under load: the real `syncpay serve` binary is loaded by
//! `syncpay bench --server` (real shops, carrier, signing handsets, gRPC),
//! killed with SIGKILL once the load runs and after a random further delay,
//! and its store is then recomputed from scratch (every event key of every
//! shop, read with sled directly: gap-free from 1, and the highest) and
//! compared with what the store derives at open (each shop's event head).
//!
//! The run prints its seed; `SYNCPAY_REBUILD_SEED` replays one and
//! `SYNCPAY_REBUILD_CYCLES` (default 2) sets how many kills to run.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::binary::{Running, Serve};
use syncpay::domain::{Amount, ShopId, TradeId, UnixMs};
use syncpay::store::fixture::{jpy, number, Fixture};
use syncpay::store::records::{PayerRef, TradeRequest};
use syncpay::store::sled::{SledStore, StoreConfig, NEW_STORE_SEGMENT_SIZE};
use syncpay::store::{NewTrade, Parties, Store, Trades};

/// Kills of the default run.
const DEFAULT_CYCLES: u64 = 2;

/// The random delay after the load begins, up to this many milliseconds:
/// long enough to land anywhere in a group commit, short enough to keep
/// the default run lean.
const MAX_DELAY_MS: u64 = 2_500;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.parse().unwrap_or_else(|_| panic!("{name} must be a number")))
}

/// splitmix64: enough randomness for a delay, and replayable from the seed.
fn next(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The full recomputation: every shop's event numbers, from sled itself.
fn events_per_shop(store_dir: &Path) -> BTreeMap<String, Vec<u64>> {
    // The store was made by this binary, so with its segment size (sled
    // refuses a different one).
    let db = sled::Config::new()
        .path(store_dir)
        .segment_size(NEW_STORE_SEGMENT_SIZE)
        .open()
        .expect("open the store with sled");
    let mut shops: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for item in db.open_tree("shops").expect("shops tree").iter() {
        let (key, _) = item.expect("read a shop");
        shops.insert(String::from_utf8(key.to_vec()).expect("shop ids are text"), Vec::new());
    }
    for item in db.open_tree("events").expect("events tree").iter() {
        let (key, _) = item.expect("read an event");
        let zero = key.iter().position(|b| *b == 0).expect("event key: shop 0 seq");
        let shop = String::from_utf8(key[..zero].to_vec()).expect("shop ids are text");
        let seq: [u8; 8] = key[zero + 1..].try_into().expect("8-byte sequence");
        shops.get_mut(&shop).unwrap_or_else(|| panic!("event of unknown shop {shop}")).push(u64::from_be_bytes(seq));
    }
    shops
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_heads_rebuilt_at_open_match_a_full_recomputation_after_kill_9() {
    let seed = env_u64("SYNCPAY_REBUILD_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_nanos() as u64
    });
    let cycles = env_u64("SYNCPAY_REBUILD_CYCLES").unwrap_or(DEFAULT_CYCLES);
    eprintln!("rebuilt-state test: seed {seed} (SYNCPAY_REBUILD_SEED={seed} replays it), {cycles} cycles");
    let mut rng = seed;
    for cycle in 0..cycles {
        let dir = tempfile::tempdir().expect("tempdir");
        let serve = Serve::start(dir.path(), &[]);
        let token = dir.path().join("admin.token");
        let token = token.display().to_string();
        let bench = Running::spawn(
            &[
                "bench",
                "--mode",
                "syncpay",
                "--server",
                &serve.url,
                "--token-file",
                &token,
                "--duration",
                "120s",
                "--inflight",
                "32",
                "--shops",
                "3",
                "--handsets",
                "16",
            ],
            "stderr",
        );
        bench.wait_line(|l| l.contains("loading for").then_some(()));
        let delay = next(&mut rng) % MAX_DELAY_MS;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        // Dropping a child kills it with SIGKILL and waits for it.
        drop(serve);
        drop(bench);

        let store_dir = dir.path().join("store");
        let recomputed = events_per_shop(&store_dir);
        let total: usize = recomputed.values().map(Vec::len).sum();
        eprintln!("cycle {cycle}: killed {delay} ms into the load; {total} events in {} shops", recomputed.len());
        assert!(total > 0, "the load wrote no event before the kill (cycle {cycle}, seed {seed})");
        for (shop, seqs) in &recomputed {
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, &expected, "shop {shop}: events not gap-free from 1 (cycle {cycle}, seed {seed})");
        }

        let config = StoreConfig::new(&store_dir);
        let store = tokio::task::spawn_blocking(move || SledStore::open(config))
            .await
            .expect("join")
            .expect("the store opens after kill -9");
        for (shop, seqs) in &recomputed {
            let id = ShopId::parse(shop).expect("a stored shop id");
            let record = store.shop(&id).await.expect("read the shop").expect("the shop exists");
            assert_eq!(
                record.next_event_seq,
                seqs.len() as u64 + 1,
                "shop {shop}: the head derived at open is not the recomputed one (cycle {cycle}, seed {seed})"
            );
            // The writer goes on from there: the next event is numbered
            // one above the last, and is this trade's.
            let created = next_trade(&store, &id).await;
            let n = seqs.len() as u64;
            let events = store.events(&id, n, n + 1, 10).await.expect("read events");
            assert_eq!(
                events.iter().map(|e| (e.seq, e.trade.id)).collect::<Vec<_>>(),
                vec![(n + 1, created)],
                "shop {shop}: the first event after the restart (cycle {cycle}, seed {seed})"
            );
        }
    }
}

/// Creates one trade at a new register of `shop` (its payer is whoever the
/// number is: a trade that fails at once emits an event too).
async fn next_trade(store: &SledStore, shop: &ShopId) -> TradeId {
    let now =
        UnixMs(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis() as u64);
    let handle: Store = std::sync::Arc::new(store.clone());
    let register = Fixture::new(handle, now).register(shop, "after the kill").await;
    let trade = NewTrade {
        shop: shop.clone(),
        trade_id: TradeId::generate().expect("entropy"),
        request: TradeRequest {
            register,
            payer: PayerRef::Number(number("+819099990000")),
            amount: Amount::new(100),
            currency: jpy(),
            description: "after the kill".into(),
            ttl_ms: 60_000,
        },
        idempotency_key: None,
        binding_code: "123456".into(),
        max_open_per_register: 10,
        offer_gate: None,
        asked: None,
        now,
    };
    store.create_trade(trade).await.expect("create a trade after the restart").trade.id
}
