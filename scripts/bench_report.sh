#!/usr/bin/env bash
# The runs behind docs/BENCHMARK.md's "Latest figures" and "Scale"
# sections, one after another (run it on an otherwise idle machine):
#   cargo build --release && scripts/bench_report.sh OUT_DIR [STORE_DIR]
# OUT_DIR gets each run's summary (.txt), JSON, SVG and stderr, and
# runs.log with the load average at the start of each run, the open-loop
# run at half the sweep's best throughput (rate-half.*), and the
# PostgreSQL anchor (scripts/pgbench_settle.sh, when PostgreSQL is
# installed) with syncpay's ratio to it at 64 in flight, and syncpay on
# PostgreSQL with one and two nodes beside sled (pg-64.*). STORE_DIR
# (default OUT_DIR/store-1m, about 1.5 GB) keeps the million-trade store.
# Takes about 15 minutes on the 2-core machine of the report.
set -euo pipefail
out=${1:?usage: scripts/bench_report.sh OUT_DIR [STORE_DIR]}
store=${2:-$out/store-1m}
bin="$(cd "$(dirname "$0")/.." && pwd)/target/release/syncpay"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
mkdir -p "$out"
cd "$out"
log() { echo "[$(date +%T)] $*  (load: $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a runs.log; }
git -C "$(dirname "$bin")/../.." rev-parse --short HEAD > commit.txt
for n in 4 16 64 256; do
  log "syncpay and ceiling, $n in flight"
  "$bin" bench --duration 20s --inflight "$n" --shops 8 --out "both-$n.json" --svg "both-$n.svg" > "both-$n.txt" 2> "both-$n.err"
done
# Issue 14's latency target is p99 at half the maximum throughput: the
# sweep's best settled/s, halved, started on a schedule (open loop).
max=$(for n in 4 16 64 256; do grep -m1 '"settled_per_s"' "both-$n.json" | sed 's/[^0-9.]//g'; done | sort -g | tail -1)
half=$(awk -v m="$max" 'BEGIN { printf "%d", m / 2 }')
log "open loop at half the maximum: $half trades/s (the sweep's best: $max/s)"
"$bin" bench --mode syncpay --duration 20s --rate "$half" --inflight 256 --shops 8 \
  --out rate-half.json > rate-half.txt 2> rate-half.err
grep -E "settled |latency" rate-half.txt | tee -a runs.log
log "PostgreSQL anchor: pgbench, the settle transaction only, 64 clients"
here="$(cd "$(dirname "$bin")/../.." && pwd)"
if "$here/scripts/pgbench_settle.sh" 64 20 8 > pgbench-64.txt 2> pgbench-64.err; then
  pg_tps=$(sed -n 's/^pgbench_settle_tps=//p' pgbench-64.txt)
  sp_tps=$(grep -m1 '"settled_per_s"' both-64.json | sed 's/[^0-9.]//g')
  awk -v s="$sp_tps" -v p="$pg_tps" 'BEGIN { printf "syncpay %.0f settled/s, PostgreSQL settle-only %.0f tx/s: %.2fx\n", s, p, s / p }' \
    | tee -a pgbench-64.txt | tee -a runs.log
else
  log "no PostgreSQL anchor: $(tail -n 1 pgbench-64.err)"
fi
log "sled, PostgreSQL with 1 and 2 nodes, 64 in flight (issue 15)"
if "$bin" bench --mode syncpay --postgres cluster --pg-nodes 1,2 --duration 20s --inflight 64 --shops 8 \
     --out pg-64.json --svg pg-64.svg > pg-64.txt 2> pg-64.err; then
  grep -E "throughput" pg-64.txt | tee -a runs.log
else
  log "no PostgreSQL run: $(tail -n 1 pg-64.err)"
fi
log "one shop, 64 in flight"
"$bin" bench --mode syncpay --duration 20s --inflight 64 --shops 1 --out oneshop-64.json > oneshop-64.txt 2> oneshop-64.err
log "flush-only, 64 in flight"
"$bin" bench --mode syncpay --duration 20s --inflight 64 --shops 8 --durability flush-only \
  --out flushonly-64.json > flushonly-64.txt 2> flushonly-64.err
log "100 000 open trades"
"$bin" bench --open-trades 100000 --shops 8 --handsets 256 --inflight 64 --out open-100k.json > open-100k.txt 2> open-100k.err
log "fill 1 000 000 settled, then restarts"
rm -rf "$store"
"$bin" bench --fill 1000000 --keep-store "$store" --inflight 256 --shops 8 --handsets 256 \
  --out fill-1m.json > fill-1m.txt 2> fill-1m.err
log "restarts on the kept store"
"$bin" bench --restart-only "$store" --out restart-1m.json > restart-1m.txt 2> restart-1m.err
log "done"
