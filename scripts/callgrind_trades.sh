#!/usr/bin/env bash
# Instructions per settled trade of the server, counted by callgrind (it
# repeats where wall-clock figures on a shared 2-core machine do not):
#   cargo build --release && scripts/callgrind_trades.sh OUT_DIR [WINDOW_S] [INFLIGHT] [SHOPS] [DURABILITY]
# (SYNCPAY_BIN=path runs another build of the binary, for an A/B)
# Runs `syncpay serve` under `valgrind --tool=callgrind --instr-atstart=no
# --separate-threads=yes`, loads it with `syncpay bench --server` (same
# settings as the bench's own child server), switches instrumentation on 5 s
# into the load and dumps the counts WINDOW_S (default 20) seconds later, so
# setup, ramp-up and drain are not counted, then prints the breakdown per settled
# trade (scripts/callgrind_breakdown.py; a trade is one call of
# syncpay::domain::approval::verify_bytes, the one signature check per answer:
# a function of ours, so a build with LTO still has it).
# OUT_DIR keeps the callgrind files, the server's and the bench's stderr.
set -euo pipefail
out=${1:?usage: scripts/callgrind_trades.sh OUT_DIR [WINDOW_S] [INFLIGHT] [SHOPS] [DURABILITY]}
window=${2:-20}
inflight=${3:-64}
shops=${4:-8}
durability=${5:-fsync}
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${SYNCPAY_BIN:-$root/target/release/syncpay}"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 2; }
mkdir -p "$out"
out="$(cd "$out" && pwd)"
rm -f "$out"/callgrind.out.*
data="$(mktemp -d)"
trap 'kill "$vg" 2>/dev/null || true; rm -rf "$data"' EXIT
valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
  --callgrind-out-file="$out/callgrind.out.%p" \
  "$bin" serve --listen 127.0.0.1:0 --metrics-listen off --console-listen off \
  --set limits.subscriber_offers_per_minute=0 --set limits.shop_trades_per_second=0 \
  --log-level warn --durability "$durability" --data-dir "$data" 2> "$out/server.err" &
vg=$!
for _ in $(seq 600); do
  grep -q "serving on" "$out/server.err" && break
  sleep 0.5
done
url=$(grep -o 'http://[0-9.:]*' "$out/server.err" | head -1)
[ -n "$url" ] || { echo "server did not start; see $out/server.err" >&2; exit 1; }
duration=$((window + 10))
"$bin" bench --mode syncpay --server "$url" --token-file "$data/admin.token" --server-pid "$vg" \
  --duration "${duration}s" --inflight "$inflight" --shops "$shops" > "$out/bench.txt" 2> "$out/bench.err" &
bench=$!
for _ in $(seq 1200); do
  grep -q "loading for" "$out/bench.err" && break
  sleep 0.5
done
sleep 5
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" > "$out/window.txt"
callgrind_control -i on "$vg" > /dev/null
sleep "$window"
callgrind_control -d "$vg" > /dev/null
callgrind_control -i off "$vg" > /dev/null
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)" >> "$out/window.txt"
wait "$bench" || echo "bench exited with $?" >&2
kill -TERM "$vg"
wait "$vg" || true
# The window's dump is part 1 (callgrind.out.PID.1-TID); the exit's is not.
python3 "$root/scripts/callgrind_breakdown.py" --marker syncpay::domain::approval::verify_bytes "$out"/callgrind.out.*.1-* \
  | tee "$out/breakdown.txt"
