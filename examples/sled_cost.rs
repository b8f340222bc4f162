//! What sled 0.34 costs on its own, without syncpay (issue 14): per key in
//! a multi-tree transaction, in `Tree::apply_batch` on one tree and in a
//! plain `insert`; per group commit (flush, then fdatasync); by value size;
//! and per trade for today's key layout and the lean one. One writer
//! thread, like the store's.
//!
//! ```sh
//! cargo run --release --example sled_cost -- MODE [ops=N] [group=G] [keys=K] [value=B] [sync=none|flush|fsync]
//! ```
//!
//! MODE: `tx` (K keys per op over 16 trees, one transaction per group of G
//! ops), `batch` (the same keys in one tree under a tree byte, one
//! `apply_batch` per group), `insert` (one `insert` per key), `today` (an op
//! is one trade's three commands as the store writes them now, reads
//! included), `lean` (the same trades as write-only batches of the lean
//! layout: trade and event per state change, deadline, one record per
//! posting set, payout entry), `lean-tx` (the lean writes as a write-only
//! multi-tree transaction). Prints ops/s and CPU µs per op (all threads,
//! sled's included). For instruction counts run it under
//! `valgrind --tool=callgrind` at two `ops` and take the difference.

use std::fs::File;
use std::time::Instant;

use sled::transaction::{ConflictableTransactionError, TransactionalTree};
use sled::{Batch, Transactional, Tree};

const TREES: usize = 16;
const SHOPS: u64 = 8;
const HANDSETS: u64 = 256;

struct Opts {
    mode: String,
    ops: u64,
    group: u64,
    keys: u64,
    value: usize,
    sync: String,
}

fn opts() -> Opts {
    let mut o = Opts { mode: String::new(), ops: 20_000, group: 16, keys: 8, value: 64, sync: "flush".into() };
    for a in std::env::args().skip(1) {
        let num = |v: &str| v.parse::<u64>().unwrap_or_else(|_| panic!("{a}: not a number"));
        match a.split_once('=') {
            Some(("ops", v)) => o.ops = num(v),
            Some(("group", v)) => o.group = num(v).max(1),
            Some(("keys", v)) => o.keys = num(v),
            Some(("value", v)) => o.value = usize::try_from(num(v)).unwrap_or(64),
            Some(("sync", v)) => o.sync = v.to_owned(),
            None => o.mode = a,
            _ => panic!("unknown argument {a}"),
        }
    }
    o
}

/// CPU seconds of the process, every thread (user + system).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 2..]);
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields 14 and 15 of stat (utime, stime) after pid, comm and state.
    f.get(10..12).map_or(0.0, |t| (t[0] + t[1]) as f64 / 100.0)
}

/// A deterministic stream of pseudo-random bytes (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn id(&mut self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&self.next().to_le_bytes());
        b[8..].copy_from_slice(&self.next().to_le_bytes());
        b
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn owned(owner: &str, rest: &[u8]) -> Vec<u8> {
    [owner.as_bytes(), &[0], rest].concat()
}

/// One write: tree index, key, value (`None` deletes).
type Write = (usize, Vec<u8>, Option<Vec<u8>>);

/// Applies a group's writes the way `mode` does.
fn apply(mode: &str, trees: &[Tree], one: &Tree, writes: Vec<Write>) {
    match mode {
        "insert" => {
            for (t, k, v) in writes {
                match v {
                    Some(v) => one.insert([&[t as u8][..], &k].concat(), v).map(drop),
                    None => one.remove([&[t as u8][..], &k].concat()).map(drop),
                }
                .expect("insert");
            }
        }
        "batch" | "lean" => {
            let mut batch = Batch::default();
            for (t, k, v) in writes {
                let key = [&[t as u8][..], &k].concat();
                match v {
                    Some(v) => batch.insert(key, v),
                    None => batch.remove(key),
                }
            }
            one.apply_batch(batch).expect("batch");
        }
        _ => {
            let refs: Vec<&Tree> = trees.iter().collect();
            refs.as_slice()
                .transaction(|view: &Vec<TransactionalTree>| {
                    for (t, k, v) in &writes {
                        match v {
                            Some(v) => view[*t].insert(k.as_slice(), v.as_slice()).map(drop)?,
                            None => view[*t].remove(k.as_slice()).map(drop)?,
                        }
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .expect("transaction");
        }
    }
}

/// A trade moving through its three commands.
struct Trade {
    id: [u8; 16],
    shop: u64,
    payer: u64,
    deadline: u64,
    delivery: u64,
    stage: u8,
}

/// Sizes of today's records (postcard, as the footprint test reads them).
const TRADE_PENDING: usize = 150;
const TRADE_SETTLED: usize = 330;
const EVENT: usize = 40;
const OFFER: usize = 130;
const POSTING: usize = 55;
const ACCOUNT: usize = 40;
const REGISTER: usize = 60;
const SHOP: usize = 30;
const PAYOUT: usize = 45;

/// Counters and sequences the simulation keeps (the store keeps them in
/// sled today, in memory in the lean layout).
#[derive(Default)]
struct Seqs {
    event: [u64; SHOPS as usize],
    posting: u64,
    set: u64,
    delivery: u64,
    now: u64,
}

/// Today's writes for one command of `trade` (reads in a transaction, as
/// the store does, are done on `view` by the caller in `today`).
fn trade_writes(lean: bool, tr: &mut Trade, s: &mut Seqs, rng: &mut Rng) -> (Vec<Write>, Vec<(usize, Vec<u8>)>) {
    let shop = format!("bench-shop-{}", tr.shop);
    let payer = format!("+8190{:08}", tr.payer);
    let mut w: Vec<Write> = Vec::new();
    let mut reads: Vec<(usize, Vec<u8>)> = Vec::new();
    let ev = |s: &mut Seqs, w: &mut Vec<Write>, rng: &mut Rng| {
        s.event[tr.shop as usize] += 1;
        w.push((10, owned(&shop, &s.event[tr.shop as usize].to_be_bytes()), Some(rng.bytes(EVENT))));
    };
    let deadline_key = [&tr.deadline.to_be_bytes()[..], &tr.id].concat();
    match tr.stage {
        0 => {
            reads.extend([(2, shop.as_bytes().to_vec()), (6, owned(&shop, b"register-0000001"))]);
            reads.extend([(8, tr.id.to_vec()), (4, payer.as_bytes().to_vec()), (5, payer.as_bytes().to_vec())]);
            if !lean {
                w.push((6, owned(&shop, b"register-0000001"), Some(rng.bytes(REGISTER))));
                s.delivery += 1;
                tr.delivery = s.delivery;
                w.push((0, b"delivery".to_vec(), Some(s.delivery.to_be_bytes().to_vec())));
                w.push((11, owned("bench-carrier", &s.delivery.to_be_bytes()), Some(rng.bytes(OFFER))));
                w.push((2, shop.as_bytes().to_vec(), Some(rng.bytes(SHOP))));
            }
            w.push((13, deadline_key, Some(vec![1])));
            w.push((8, tr.id.to_vec(), Some(rng.bytes(TRADE_PENDING))));
            ev(s, &mut w, rng);
        }
        1 => {
            reads.extend([(11, owned("bench-carrier", &tr.delivery.to_be_bytes())), (8, tr.id.to_vec())]);
            if !lean {
                w.push((11, owned("bench-carrier", &tr.delivery.to_be_bytes()), None));
                w.push((2, shop.as_bytes().to_vec(), Some(rng.bytes(SHOP))));
            }
            w.push((8, tr.id.to_vec(), Some(rng.bytes(TRADE_PENDING))));
            ev(s, &mut w, rng);
        }
        _ => {
            let wallet = [b"W".as_slice(), payer.as_bytes(), b"JPY"].concat();
            let payable = [b"S".as_slice(), shop.as_bytes(), b"JPY"].concat();
            reads.extend([(8, tr.id.to_vec()), (5, payer.as_bytes().to_vec()), (4, payer.as_bytes().to_vec())]);
            reads.extend([(7, wallet.clone()), (7, payable.clone()), (6, owned(&shop, b"register-0000001"))]);
            s.set += 1;
            if lean {
                // One record per posting set (its legs inside).
                w.push((9, s.set.to_be_bytes().to_vec(), Some(rng.bytes(2 * POSTING - 20))));
            } else {
                w.push((0, b"posting_set".to_vec(), Some(s.set.to_be_bytes().to_vec())));
                for _ in 0..2 {
                    s.posting += 1;
                    w.push((0, b"posting".to_vec(), Some(s.posting.to_be_bytes().to_vec())));
                    w.push((9, s.posting.to_be_bytes().to_vec(), Some(rng.bytes(POSTING))));
                }
                w.push((7, wallet, Some(rng.bytes(ACCOUNT))));
                w.push((7, payable, Some(rng.bytes(ACCOUNT))));
                w.push((6, owned(&shop, b"register-0000001"), Some(rng.bytes(REGISTER))));
                w.push((2, shop.as_bytes().to_vec(), Some(rng.bytes(SHOP))));
            }
            let payout = [&b"S"[..], shop.as_bytes(), &[0], &s.now.to_be_bytes(), &s.set.to_be_bytes()].concat();
            w.push((14, payout, Some(rng.bytes(PAYOUT))));
            w.push((13, deadline_key, None));
            w.push((8, tr.id.to_vec(), Some(rng.bytes(TRADE_SETTLED))));
            ev(s, &mut w, rng);
        }
    }
    (w, reads)
}

fn main() {
    let o = opts();
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::Config::new()
        .path(dir.path())
        .cache_capacity(32 * 1024 * 1024)
        .segment_size(2 * 1024 * 1024)
        .flush_every_ms(Some(50))
        .open()
        .expect("open");
    let trees: Vec<Tree> = (0..TREES).map(|i| db.open_tree(format!("t{i}")).expect("tree")).collect();
    let one = db.open_tree("one").expect("tree");
    let data = File::open(dir.path().join("db")).expect("data file");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let trade_mode = matches!(o.mode.as_str(), "today" | "lean" | "lean-tx");
    if !trade_mode && !matches!(o.mode.as_str(), "tx" | "batch" | "insert") {
        eprintln!("MODE: tx | batch | insert | today | lean | lean-tx");
        std::process::exit(2);
    }
    // Trades in flight, as in the bench at 64: each op advances one of
    // them by one command, so a group mixes creates, acks and answers.
    let mut inflight: Vec<Trade> = Vec::new();
    let mut seqs = Seqs::default();
    let mut counter = 0u64;
    let (cpu0, t0) = (cpu_s(), Instant::now());
    let (mut keys, mut groups) = (0u64, 0u64);
    let mut done = 0u64;
    while done < o.ops {
        let mut writes: Vec<Write> = Vec::new();
        let mut reads: Vec<(usize, Vec<u8>)> = Vec::new();
        for _ in 0..o.group {
            if !trade_mode {
                for k in 0..o.keys {
                    // Half append keys, half random ids, like the store's trees.
                    counter += 1;
                    let key = if k % 2 == 0 { counter.to_be_bytes().to_vec() } else { rng.id().to_vec() };
                    writes.push(((k % TREES as u64) as usize, key, Some(rng.bytes(o.value))));
                }
                done += 1;
                continue;
            }
            seqs.now += 1;
            if inflight.len() < 64 {
                let n = counter;
                counter += 1;
                inflight.push(Trade {
                    id: rng.id(),
                    shop: n % SHOPS,
                    payer: n % HANDSETS,
                    deadline: seqs.now + 120_000,
                    delivery: 0,
                    stage: 0,
                });
            }
            let i = (rng.next() % inflight.len() as u64) as usize;
            let (w, r) = trade_writes(o.mode != "today", &mut inflight[i], &mut seqs, &mut rng);
            writes.extend(w);
            if o.mode == "today" {
                reads.extend(r);
            }
            inflight[i].stage += 1;
            if inflight[i].stage == 3 {
                inflight.swap_remove(i);
                done += 1;
            }
        }
        keys += writes.len() as u64;
        if o.mode == "today" {
            // Reads and writes inside one transaction, as the store does.
            let refs: Vec<&Tree> = trees.iter().collect();
            refs.as_slice()
                .transaction(|view: &Vec<TransactionalTree>| {
                    for (t, k) in &reads {
                        view[*t].get(k.as_slice())?;
                    }
                    for (t, k, v) in &writes {
                        match v {
                            Some(v) => view[*t].insert(k.as_slice(), v.as_slice()).map(drop)?,
                            None => view[*t].remove(k.as_slice()).map(drop)?,
                        }
                    }
                    Ok::<_, ConflictableTransactionError<()>>(())
                })
                .expect("transaction");
        } else {
            apply(if o.mode == "lean-tx" { "tx" } else { &o.mode }, &trees, &one, writes);
        }
        match o.sync.as_str() {
            "none" => {}
            "flush" => drop(db.flush().expect("flush")),
            _ => {
                db.flush().expect("flush");
                data.sync_data().expect("fdatasync");
            }
        }
        groups += 1;
    }
    let (cpu, wall) = (cpu_s() - cpu0, t0.elapsed().as_secs_f64());
    let disk: u64 = std::fs::metadata(dir.path().join("db")).map_or(0, |m| m.len());
    println!(
        "{} ops={} group={} value={} sync={}: {:.0} ops/s, {:.1} µs CPU/op, {:.1} µs wall/op, {:.1} keys/op, {:.0} groups/s, log {} KiB",
        o.mode,
        done,
        o.group,
        o.value,
        o.sync,
        done as f64 / wall,
        cpu * 1e6 / done as f64,
        wall * 1e6 / done as f64,
        keys as f64 / done as f64,
        groups as f64 / wall,
        disk / 1024
    );
}
