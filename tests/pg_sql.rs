//! The PostgreSQL backend's concurrency claims (docs/POSTGRES.md), tested
//! at the SQL level on a real throwaway cluster with several connections
//! racing, as several syncpay nodes would: migrations applied once and a
//! newer schema refused; exactly one settlement however many answer at
//! once; wallets never below zero with transfers crossing in both
//! directions (no deadlock, nothing lost); gap-free per-shop event numbers
//! that a concurrent reader never sees out of order; an idempotency key
//! owned by one request; sweepers and outbox claims that never take the
//! same work; prefixes that cannot overlap even when added at once;
//! longest-prefix match and lease lookups. Also the schema's own guards
//! (immutable postings, final states, signed fields).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use common::pg::{self, PgDb};
use rand::{RngExt, SeedableRng};
use syncpay::domain::{
    AccountName, Amount, CarrierId, Currency, IpKey, IpPrefix, PortRange, PostingSet, ShopId, SubscriberNumber,
    TradeId, TradeState, UnixMs,
};
use syncpay::store::postgres::migrate::{self, schema_version};
use syncpay::store::postgres::numeric::Minor;
use syncpay::store::postgres::sql::{self, Claim, KeyedRequest, PostRefusal, SetKind};
use syncpay::store::postgres::{pool, PgError};
use tokio_postgres::Client;

fn jpy() -> Currency {
    Currency::parse("JPY").expect("JPY")
}

fn shop() -> ShopId {
    ShopId::parse("acme").expect("shop")
}

fn wallet(i: usize) -> AccountName {
    AccountName::Wallet(SubscriberNumber::parse(&format!("+8180000{i:05}")).expect("number"), jpy())
}

const REGISTER: [u8; 16] = [9; 16];

/// A shop with a register and its event counter, and a carrier.
async fn fixture(c: &Client) {
    c.batch_execute(
        "INSERT INTO shops (id, display_name, created_at) VALUES ('acme', 'Acme', 1);
         INSERT INTO shop_event_heads (shop) VALUES ('acme');
         INSERT INTO carriers (id, display_name, created_at, fee_bps) VALUES ('docomo', 'Docomo', 1, 0), ('kddi', 'KDDI', 1, 0);",
    )
    .await
    .expect("fixture");
    c.execute(
        "INSERT INTO registers (shop, id, label, open, opened_at) VALUES ('acme', $1, 'till', true, 1)",
        &[&REGISTER.as_slice()],
    )
    .await
    .expect("register");
}

async fn insert_trade(c: &Client, id: &TradeId, amount: u64, expires_at: u64) {
    c.execute(
        "INSERT INTO trades (id, shop, register, carrier, payer, amount, currency, description, ttl_ms, state,
                             binding_code, created_at, expires_at, screen_digest)
         VALUES ($1, 'acme', $2, 'docomo', '+818000000000', $3, 'JPY', 'book', 60000, 'PENDING', '123456', 1, $4,
                 decode(repeat('00', 32), 'hex'))",
        &[&id.as_bytes().as_slice(), &REGISTER.as_slice(), &Minor(amount), &i64::try_from(expires_at).expect("ms")],
    )
    .await
    .expect("trade");
}

async fn top_up(db: &PgDb, account: &AccountName, amount: u64) {
    let mut c = db.client().await;
    let tx = c.transaction().await.expect("tx");
    let set =
        PostingSet::transfer(AccountName::SystemFunding(jpy()), account.clone(), Amount::new(amount)).expect("set");
    sql::post(&tx, &set, SetKind::TopUp, None, UnixMs(1)).await.expect("post").expect("not refused");
    tx.commit().await.expect("commit");
}

async fn balance(c: &Client, account: &AccountName) -> (u64, u64) {
    let row =
        c.query_one("SELECT debits, credits FROM accounts WHERE name = $1", &[&account.key()]).await.expect("row");
    (row.get::<_, Minor>(0).0, row.get::<_, Minor>(1).0)
}

/// Every account's balance equals its postings, and balances sum to zero
/// per currency.
async fn ledger_adds_up(c: &Client) {
    let bad = c
        .query(
            "SELECT a.name FROM accounts a LEFT JOIN (
                 SELECT account, sum(CASE side WHEN 'D' THEN amount ELSE 0 END) AS d,
                                 sum(CASE side WHEN 'C' THEN amount ELSE 0 END) AS c
                 FROM postings GROUP BY account) p ON p.account = a.name
             WHERE a.debits <> coalesce(p.d, 0) OR a.credits <> coalesce(p.c, 0)",
            &[],
        )
        .await
        .expect("query");
    assert!(bad.is_empty(), "accounts differing from their postings: {:?}", bad.len());
    let sums = c
        .query("SELECT currency, (sum(credits) - sum(debits))::text FROM accounts GROUP BY currency", &[])
        .await
        .expect("sums");
    for row in sums {
        assert_eq!(row.get::<_, &str>(1), "0", "currency {}", row.get::<_, &str>(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_even_when_nodes_start_together_and_a_newer_schema_is_refused() {
    let Some(db) = pg::database("migrations") else { return };
    // Four nodes starting at once: one applies the schema, the others wait
    // on the advisory lock and find it there.
    let mut runs = Vec::new();
    for _ in 0..4 {
        let mut c = db.client().await;
        runs.push(tokio::spawn(async move { migrate::migrate(&mut c).await.expect("migrate") }));
    }
    let mut applied = 0;
    for r in runs {
        let report = r.await.expect("join");
        applied += report.applied.len();
        assert!(report.found == 0 || report.found == schema_version());
    }
    assert_eq!(applied, 1, "the one migration applied exactly once");
    let mut c = db.client().await;
    let again = migrate::migrate(&mut c).await.expect("again");
    assert_eq!((again.found, again.applied.len()), (schema_version(), 0));

    // A newer binary's migration in the database: refused, nothing done.
    c.execute(
        "INSERT INTO syncpay_schema_migrations (version, name, checksum) VALUES ($1, 'future', 'x')",
        &[&(schema_version() + 1)],
    )
    .await
    .expect("plant");
    match migrate::migrate(&mut c).await {
        Err(PgError::SchemaTooNew { database, binary }) => {
            assert_eq!((database, binary), (schema_version() + 1, schema_version()))
        }
        other => panic!("a newer schema was not refused: {other:?}"),
    }
    c.execute("DELETE FROM syncpay_schema_migrations WHERE version > $1", &[&schema_version()]).await.expect("undo");
    // An applied migration edited since: refused.
    c.execute("UPDATE syncpay_schema_migrations SET checksum = 'edited' WHERE version = 1", &[]).await.expect("edit");
    assert!(matches!(migrate::migrate(&mut c).await, Err(PgError::SchemaMismatch(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_commits_synchronously_and_an_unsafe_session_is_refused() {
    let Some(db) = pg::database("durability") else { return };
    let pool = pool::connect(&db.url, 4).await.expect("pool");
    let c = pool.get().await.expect("connection");
    let row =
        c.query_one("SELECT current_setting('synchronous_commit'), current_setting('fsync')", &[]).await.expect("q");
    assert_eq!((row.get::<_, &str>(0), row.get::<_, &str>(1)), ("on", "on"));
    // The harness's cluster keeps durability on, and the check says so.
    pool::check_server(&c).await.expect("a durable server passes");
    // A session that would acknowledge before the WAL is flushed is refused.
    let (unsafe_client, conn) =
        tokio_postgres::connect(&format!("{}?options=-c%20synchronous_commit%3Doff", db.url), tokio_postgres::NoTls)
            .await
            .expect("connect");
    tokio::spawn(conn);
    match pool::check_server(&unsafe_client).await {
        Err(PgError::Unsafe(why)) => assert!(why.contains("synchronous_commit"), "{why}"),
        other => panic!("synchronous_commit=off accepted: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_settlement_however_many_nodes_answer_at_once() {
    let Some(db) = pg::database("one_settlement") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    let payer = wallet(0);
    top_up(&db, &payer, 1_000).await;
    let trade = TradeId::from_bytes([1; 16]);
    insert_trade(&c, &trade, 100, 10_000).await;

    // Eight connections answer the same trade at the same moment.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut client = db.client().await;
        let (start, payer) = (start.clone(), payer.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let tx = client.transaction().await.expect("tx");
            let state = sql::lock_trade(&tx, &trade).await.expect("lock").expect("exists");
            if state.is_final() {
                return false;
            }
            let set =
                PostingSet::transfer(payer, AccountName::ShopPayable(shop(), jpy()), Amount::new(100)).expect("set");
            sql::post(&tx, &set, SetKind::Settlement, Some(&trade), UnixMs(5)).await.expect("post").expect("funds");
            assert!(sql::finish_trade(&tx, &trade, TradeState::Settled, UnixMs(5)).await.expect("finish"));
            let seq = sql::reserve_event_seqs(&tx, &shop(), 1).await.expect("seq");
            tx.execute(
                "INSERT INTO events (shop, seq, at, trade, kind, state, refunded, has_receipt)
                 VALUES ('acme', $1, 5, $2, 'STATE_CHANGED', 'SETTLED', 0, false)",
                &[&i64::try_from(seq).expect("seq"), &trade.as_bytes().as_slice()],
            )
            .await
            .expect("event");
            tx.commit().await.expect("commit");
            true
        }));
    }
    let mut settled = 0;
    for t in tasks {
        settled += usize::from(t.await.expect("join"));
    }
    assert_eq!(settled, 1, "exactly one answer settles");
    assert_eq!(balance(&c, &payer).await, (100, 1_000));
    let sets: i64 = c
        .query_one(
            "SELECT count(*) FROM posting_sets WHERE trade = $1 AND kind = 'SETTLEMENT'",
            &[&trade.as_bytes().as_slice()],
        )
        .await
        .expect("count")
        .get(0);
    assert_eq!(sets, 1);
    let events: Vec<i64> =
        c.query("SELECT seq FROM events ORDER BY seq", &[]).await.expect("events").iter().map(|r| r.get(0)).collect();
    assert_eq!(events, vec![1]);
    ledger_adds_up(&c).await;

    // The schema holds the same lines against any writer: a second
    // settlement set, a change of a final state, a change of a signed
    // field, and edits of postings are all refused.
    let second = c
        .execute(
            "INSERT INTO posting_sets (set_id, kind, trade, at) VALUES (999, 'SETTLEMENT', $1, 6)",
            &[&trade.as_bytes().as_slice()],
        )
        .await;
    assert!(second.is_err(), "a second settlement set was accepted");
    for (what, update) in [
        ("final state", "UPDATE trades SET state = 'EXPIRED' WHERE id = $1"),
        ("signed amount", "UPDATE trades SET amount = 1 WHERE id = $1"),
        ("signed expiry", "UPDATE trades SET expires_at = 20000 WHERE id = $1"),
        ("refund above amount", "UPDATE trades SET refunded = 101 WHERE id = $1"),
    ] {
        assert!(c.execute(update, &[&trade.as_bytes().as_slice()]).await.is_err(), "{what} changed");
    }
    assert!(c.execute("UPDATE trades SET refunded = 40 WHERE id = $1", &[&trade.as_bytes().as_slice()]).await.is_ok());
    assert!(c.execute("UPDATE postings SET amount = 1", &[]).await.is_err(), "postings edited");
    assert!(c.execute("DELETE FROM postings", &[]).await.is_err(), "postings deleted");
    assert!(
        c.execute("UPDATE accounts SET debits = credits + 1 WHERE name = $1", &[&payer.key()]).await.is_err(),
        "overdraft"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallets_never_go_below_zero_and_crossing_transfers_neither_deadlock_nor_lose_money() {
    let Some(db) = pg::database("wallets") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    const WALLETS: usize = 8;
    const FUNDS: u64 = 500;
    for i in 0..WALLETS {
        top_up(&db, &wallet(i), FUNDS).await;
    }
    let seed: u64 = std::env::var("SYNCPAY_PG_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("SYNCPAY_PG_SEED={seed}");
    // Eight connections, each 60 transfers between random wallets (so
    // pairs cross in both directions) of amounts that often overdraw.
    let mut tasks = Vec::new();
    for n in 0..8u64 {
        let mut client = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ n);
            let (mut done, mut refused) = (0u32, 0u32);
            for _ in 0..60 {
                let from = rng.random_range(0..WALLETS);
                let to = (from + rng.random_range(1..WALLETS)) % WALLETS;
                let amount = rng.random_range(1..=300);
                let set = PostingSet::transfer(wallet(from), wallet(to), Amount::new(amount)).expect("set");
                let tx = client.transaction().await.expect("tx");
                match sql::post(&tx, &set, SetKind::TopUp, None, UnixMs(2)).await {
                    Ok(Ok(_)) => {
                        tx.commit().await.expect("commit");
                        done += 1;
                    }
                    Ok(Err(PostRefusal::BelowZero(a))) => {
                        assert_eq!(a, wallet(from));
                        refused += 1;
                    }
                    Ok(Err(other)) => panic!("unexpected refusal {other:?}"),
                    Err(e) => panic!("a transfer failed (deadlock?): {e}"),
                }
            }
            (done, refused)
        }));
    }
    let (mut done, mut refused) = (0, 0);
    for t in tasks {
        let (d, r) = t.await.expect("join");
        done += d;
        refused += r;
    }
    eprintln!("{done} transfers committed, {refused} refused for funds");
    assert!(done > 0 && refused > 0, "the mix should both commit and refuse ({done}, {refused})");
    let mut total = 0u64;
    for i in 0..WALLETS {
        let (d, cr) = balance(&c, &wallet(i)).await;
        assert!(cr >= d, "wallet {i} below zero: {d} > {cr}");
        total += cr - d;
    }
    assert_eq!(total, FUNDS * u64::try_from(WALLETS).expect("small"), "money appeared or vanished");
    ledger_adds_up(&c).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_numbers_are_gap_free_and_a_concurrent_reader_never_sees_one_before_the_last() {
    let Some(db) = pg::database("event_seqs") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    let trade = TradeId::from_bytes([2; 16]);
    insert_trade(&c, &trade, 100, 10_000).await;
    let writers_done = Arc::new(std::sync::atomic::AtomicBool::new(false));

    // A reader pages by cursor, as WatchTrades does, while writers commit.
    let reader = {
        let client = db.client().await;
        let done = writers_done.clone();
        tokio::spawn(async move {
            let mut cursor = 0i64;
            loop {
                let finished = done.load(std::sync::atomic::Ordering::SeqCst);
                let rows = client
                    .query("SELECT seq FROM events WHERE shop = 'acme' AND seq > $1 ORDER BY seq", &[&cursor])
                    .await
                    .expect("read");
                for r in rows {
                    let seq: i64 = r.get(0);
                    assert_eq!(seq, cursor + 1, "the reader saw {seq} before {}", cursor + 1);
                    cursor = seq;
                }
                if finished {
                    return cursor;
                }
                tokio::task::yield_now().await;
            }
        })
    };
    // Six writers, 40 transactions each of 1 to 3 events; one in five rolls
    // back after reserving its numbers.
    let mut tasks = Vec::new();
    for n in 0..6u64 {
        let mut client = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(n);
            let mut committed = 0u64;
            for _ in 0..40 {
                let k: u32 = rng.random_range(1..=3);
                let tx = client.transaction().await.expect("tx");
                let first = sql::reserve_event_seqs(&tx, &shop(), k).await.expect("reserve");
                for seq in first..first + u64::from(k) {
                    tx.execute(
                        "INSERT INTO events (shop, seq, at, trade, kind, state, refunded, has_receipt)
                         VALUES ('acme', $1, 5, $2, 'STATE_CHANGED', 'PENDING', 0, false)",
                        &[&i64::try_from(seq).expect("seq"), &trade.as_bytes().as_slice()],
                    )
                    .await
                    .expect("event");
                }
                if rng.random_range(0..5) == 0 {
                    tx.rollback().await.expect("rollback");
                } else {
                    tx.commit().await.expect("commit");
                    committed += u64::from(k);
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.expect("join");
    }
    writers_done.store(true, std::sync::atomic::Ordering::SeqCst);
    let seen = reader.await.expect("reader");
    assert_eq!(u64::try_from(seen).expect("seq"), committed, "the reader ends at the last committed event");
    assert_eq!(sql::event_head(&c, &shop()).await.expect("head"), Some(committed));
    let count: i64 = c.query_one("SELECT count(*) FROM events", &[]).await.expect("count").get(0);
    assert_eq!(u64::try_from(count).expect("count"), committed, "no gaps: 1..=n, n rows");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_belongs_to_the_one_request_that_committed_it() {
    let Some(db) = pg::database("idempotency") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    let request = |n: u8| KeyedRequest {
        trade: TradeId::from_bytes([n; 16]),
        amount: Amount::new(u64::from(n) * 100),
        fields: vec![Some("+818000000000".into()), Some(format!("order {n}"))],
    };
    // A claim rolled back leaves the key free.
    {
        let mut client = db.client().await;
        let tx = client.transaction().await.expect("tx");
        assert_eq!(sql::claim_create_key(&tx, &shop(), "order-1", &request(50)).await.expect("claim"), Claim::New);
        tx.rollback().await.expect("rollback");
    }
    // Eight requests race for one key; each holds its claim a moment
    // before committing, so the others wait on it.
    let start = Arc::new(tokio::sync::Barrier::new(8));
    let mut tasks = Vec::new();
    for n in 1..=8u8 {
        let mut client = db.client().await;
        let start = start.clone();
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let tx = client.transaction().await.expect("tx");
            let claim = sql::claim_create_key(&tx, &shop(), "order-1", &request(n)).await.expect("claim");
            tx.commit().await.expect("commit");
            (n, claim)
        }));
    }
    let mut owners = Vec::new();
    let mut existing = BTreeSet::new();
    for t in tasks {
        match t.await.expect("join") {
            (n, Claim::New) => owners.push(n),
            (_, Claim::Existing(r)) => {
                existing.insert(r.trade);
            }
        }
    }
    assert_eq!(owners.len(), 1, "one request owns the key: {owners:?}");
    let owner = request(owners[0]);
    assert_eq!(existing.len(), 1);
    assert_eq!(existing.into_iter().next(), Some(owner.trade), "every retry sees the owner's trade");
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("tx");
    assert_eq!(
        sql::claim_create_key(&tx, &shop(), "order-1", &request(99)).await.expect("claim"),
        Claim::Existing(owner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweepers_and_outbox_claims_on_every_node_never_take_the_same_work() {
    let Some(db) = pg::database("skip_locked") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    const TRADES: u8 = 120;
    for n in 0..TRADES {
        let mut id = [0u8; 16];
        id[0] = 7;
        id[15] = n;
        insert_trade(&c, &TradeId::from_bytes(id), 10, 1_000 + u64::from(n)).await;
    }
    // Four sweepers expire what is due, ten at a time.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut client = db.client().await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let tx = client.transaction().await.expect("tx");
                let due = sql::claim_due(&tx, UnixMs(5_000), 10).await.expect("due");
                if due.is_empty() {
                    return mine;
                }
                for id in due {
                    assert!(sql::finish_trade(&tx, &id, TradeState::Expired, UnixMs(5_000)).await.expect("expire"));
                    mine.push(id);
                }
                tx.commit().await.expect("commit");
            }
        }));
    }
    let mut all = BTreeMap::new();
    for t in tasks {
        for id in t.await.expect("join") {
            *all.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(all.len(), usize::from(TRADES), "every due trade expired");
    assert!(all.values().all(|n| *n == 1), "a trade was expired twice");

    // Outbox: three nodes claim the deliveries of one carrier at once.
    for n in 0..60i64 {
        c.execute(
            "INSERT INTO outbox (delivery_id, carrier, kind, trade, payer, withdraw_state)
             SELECT $1, 'docomo', 'WITHDRAW', id, payer, 'EXPIRED' FROM trades LIMIT 1",
            &[&n],
        )
        .await
        .expect("delivery");
    }
    let carrier = CarrierId::parse("docomo").expect("carrier");
    let start = Arc::new(tokio::sync::Barrier::new(3));
    let mut tasks = Vec::new();
    for node in ["a", "b", "c"] {
        let client = db.client().await;
        let (start, carrier) = (start.clone(), carrier.clone());
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            let mut mine = Vec::new();
            loop {
                let got = sql::claim_deliveries(&client, &carrier, node, UnixMs(10_000), 30_000, 7, false)
                    .await
                    .expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got);
            }
        }));
    }
    let mut claimed = BTreeMap::new();
    for t in tasks {
        for id in t.await.expect("join") {
            *claimed.entry(id).or_insert(0) += 1;
        }
    }
    assert_eq!(claimed.len(), 60, "every delivery claimed");
    assert!(claimed.values().all(|n| *n == 1), "a delivery was claimed by two nodes");
    // Before the claims lapse nobody else takes them, but their holder can
    // have its own again; after, anyone may.
    let claim = |node: &'static str, at: u64, own: bool| {
        let (c, carrier) = (&c, &carrier);
        async move { sql::claim_deliveries(c, carrier, node, UnixMs(at), 30_000, 100, own).await.expect("claim") }
    };
    assert!(claim("d", 39_999, true).await.is_empty());
    let own_a: i64 = c.query_one("SELECT count(*) FROM outbox WHERE claimed_by = 'a'", &[]).await.expect("n").get(0);
    assert_eq!(claim("a", 39_999, true).await.len(), usize::try_from(own_a).expect("n"));
    assert!(claim("a", 39_999, false).await.is_empty(), "renewed claims are not free to their holder either");
    assert_eq!(claim("d", 69_998, false).await.len(), claimed.len() - usize::try_from(own_a).expect("n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_never_overlap_across_carriers_even_added_at_once_and_match_longest_first() {
    let Some(db) = pg::database("prefixes") else { return };
    let c = db.migrated().await;
    fixture(&c).await;
    let (docomo, kddi) = (CarrierId::parse("docomo").expect("id"), CarrierId::parse("kddi").expect("id"));
    let p = |t: &str| IpPrefix::parse(t).expect("prefix");

    // Two nodes add overlapping prefixes for two carriers at the same
    // moment, each holding its transaction open a little: one wins.
    for round in 0..5 {
        let db_prefix = format!("10.{round}.0.0/16");
        let nested = format!("10.{round}.1.0/24");
        let start = Arc::new(tokio::sync::Barrier::new(2));
        let mut tasks = Vec::new();
        for (carrier, prefix) in [(docomo.clone(), p(&db_prefix)), (kddi.clone(), p(&nested))] {
            let mut client = db.client().await;
            let start = start.clone();
            tasks.push(tokio::spawn(async move {
                start.wait().await;
                let tx = client.transaction().await.expect("tx");
                let added = sql::add_prefixes(&tx, &carrier, &[prefix]).await.expect("add");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                tx.commit().await.expect("commit");
                added.is_ok()
            }));
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.expect("join"));
        }
        assert_eq!(wins, 1, "round {round}: overlapping prefixes of two carriers both added");
    }
    let n: i64 = c.query_one("SELECT count(*) FROM carrier_prefixes", &[]).await.expect("count").get(0);
    assert_eq!(n, 5);

    // Longest prefix first among one carrier's nested prefixes; IPv6; and
    // IPv4 addresses matched as IPv4-mapped, as the sled store does.
    let mut client = db.client().await;
    let tx = client.transaction().await.expect("tx");
    sql::add_prefixes(&tx, &docomo, &[p("172.16.0.0/12"), p("172.20.0.0/16"), p("2001:db8::/32")])
        .await
        .expect("add")
        .expect("no overlap");
    let clash = sql::add_prefixes(&tx, &kddi, &[p("2001:db8:1::/48")]).await.expect("add").expect_err("overlap");
    assert_eq!((clash.index, clash.other, clash.other_carrier.clone()), (0, p("2001:db8::/32"), docomo.clone()));
    tx.commit().await.expect("commit");
    let ip = |t: &str| IpKey::parse(t).expect("ip");
    assert_eq!(sql::carrier_of(&c, ip("172.20.3.4")).await.expect("lpm"), Some((docomo.clone(), p("172.20.0.0/16"))));
    assert_eq!(sql::carrier_of(&c, ip("172.17.0.1")).await.expect("lpm"), Some((docomo.clone(), p("172.16.0.0/12"))));
    assert_eq!(
        sql::carrier_of(&c, ip("2001:db8:ff::1")).await.expect("lpm"),
        Some((docomo.clone(), p("2001:db8::/32")))
    );
    assert_eq!(sql::carrier_of(&c, ip("192.0.2.1")).await.expect("lpm"), None);

    // Leases: a whole address, then CGNAT port blocks, a stop, a later start.
    let addr = ip("172.20.9.9");
    let a = SubscriberNumber::parse("+818011111111").expect("n");
    let b = SubscriberNumber::parse("+818022222222").expect("n");
    sql::record_lease(&c, &docomo, addr, PortRange::ALL, UnixMs(100), Some(&a)).await.expect("lease");
    sql::record_lease(&c, &docomo, addr, PortRange::ALL, UnixMs(200), None).await.expect("stop");
    sql::record_lease(&c, &docomo, addr, PortRange::new(1024, 2047).expect("ports"), UnixMs(300), Some(&b))
        .await
        .expect("cgnat");
    sql::record_lease(&c, &docomo, addr, PortRange::new(2048, 4095).expect("ports"), UnixMs(300), Some(&a))
        .await
        .expect("cgnat");
    let holder = |port: Option<u16>, at: u64| {
        let c = &c;
        async move { sql::lease_holder(c, addr, port, UnixMs(at), 64).await.expect("lookup").map(|(_, n)| n) }
    };
    assert_eq!(holder(None, 99).await, None, "before the first lease");
    assert_eq!(holder(None, 150).await, Some(a.clone()));
    assert_eq!(holder(Some(80), 150).await, Some(a.clone()), "a whole-address lease answers any port");
    assert_eq!(holder(None, 250).await, None, "after the stop");
    assert_eq!(holder(Some(1500), 350).await, Some(b.clone()));
    assert_eq!(holder(Some(3000), 350).await, Some(a.clone()));
    assert_eq!(holder(None, 350).await, None, "no port on a shared address names nobody");
}
