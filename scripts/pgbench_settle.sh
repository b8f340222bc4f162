#!/usr/bin/env bash
# The PostgreSQL anchor of the benchmark (issue 14): PostgreSQL running
# only a shop's double-entry settle transaction -- two balance updates and
# two posting inserts, one commit -- with pgbench on a throwaway cluster it
# starts and stops itself (initdb and pg_ctl as the postgres user when run
# as root, a free loopback port, fsync and synchronous_commit on, the
# machine's defaults otherwise). Payers are 10 000 wallets; the credited
# side is one of SHOPS shop accounts, as syncpay's benchmark spreads trades
# over its shops, so the shops' rows are as contended as syncpay's are.
#
#   scripts/pgbench_settle.sh [CLIENTS] [SECONDS] [SHOPS]    (64 20 8)
#
# Prints pgbench's report and, last, one line "pgbench_settle_tps=N".
# Exits 3, saying so, when PostgreSQL is not installed.
set -euo pipefail
clients=${1:-64}
seconds=${2:-20}
shops=${3:-8}
bin=${SYNCPAY_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)}
if [ -z "$bin" ] || [ ! -x "$bin/initdb" ] || [ ! -x "$bin/pgbench" ]; then
  echo "PostgreSQL is not installed (no initdb/pgbench under /usr/lib/postgresql/*/bin or SYNCPAY_PG_BIN):" \
       "no PostgreSQL anchor in this run (apt-get install -y postgresql)" >&2
  exit 3
fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/syncpay-pgbench-XXXXXX")
as_pg=()
if [ "$(id -u)" = 0 ]; then
  chown postgres: "$dir"
  as_pg=(runuser -u postgres --)
fi
cleanup() {
  "${as_pg[@]}" "$bin/pg_ctl" stop -D "$dir/data" -m immediate >/dev/null 2>&1 || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
"${as_pg[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C >/dev/null
cat >> "$dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
fsync = on
synchronous_commit = on
full_page_writes = on
max_connections = $((clients + 20))
CONF
# A port nothing answers on (bash's /dev/tcp connect fails on a free one).
port=
for _ in $(seq 50); do
  p=$((20000 + RANDOM % 40000))
  if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then port=$p; break; fi
done
[ -n "$port" ] || { echo "no free loopback port" >&2; exit 2; }
"${as_pg[@]}" "$bin/pg_ctl" start -D "$dir/data" -w -t 120 -l "$dir/server.log" -o "-p $port -k $dir" >/dev/null
psql=("$bin/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d postgres)
"${psql[@]}" <<SQL
CREATE TABLE accounts (id integer PRIMARY KEY, balance bigint NOT NULL);
CREATE TABLE postings (id bigserial PRIMARY KEY, account integer NOT NULL REFERENCES accounts (id),
                       amount bigint NOT NULL, at timestamptz NOT NULL DEFAULT now());
INSERT INTO accounts SELECT g, 1000000000 FROM generate_series(1, 10000) g;
INSERT INTO accounts SELECT 100000 + g, 0 FROM generate_series(1, $shops) g;
VACUUM ANALYZE;
SQL
cat > "$dir/settle.sql" <<SQL
\set payer random(1, 10000)
\set shop random(1, $shops)
BEGIN;
UPDATE accounts SET balance = balance - 100 WHERE id = :payer;
UPDATE accounts SET balance = balance + 100 WHERE id = 100000 + :shop;
INSERT INTO postings (account, amount) VALUES (:payer, -100);
INSERT INTO postings (account, amount) VALUES (100000 + :shop, 100);
END;
SQL
chmod a+r "$dir/settle.sql"
echo "pgbench: settle transaction, $clients clients, ${seconds}s, $shops shop accounts, PostgreSQL $("$bin/postgres" --version | awk '{print $3}'), fsync on, synchronous_commit on"
out=$("$bin/pgbench" -n -M prepared -c "$clients" -j 2 -T "$seconds" -h 127.0.0.1 -p "$port" -U postgres \
      -f "$dir/settle.sql" postgres 2>&1)
echo "$out" | grep -E "^(number of (transactions|failed)|latency|tps|initial)"
tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\) (without initial connection time)/\1/p')
[ -n "$tps" ] || { echo "$out" >&2; exit 1; }
echo "pgbench_settle_tps=$tps"
