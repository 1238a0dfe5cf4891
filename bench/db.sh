#!/usr/bin/env bash
# Database benchmark: PostgreSQL 15 (Debian's package, a cluster this script creates) and
# Quartet's db-server on the same machine, the same tables and rows, the same pgbench scripts.
#
#   bench/db.sh                        # SCALE=10 DURATION=10 CLIENTS=8 ROUNDS=3
#
# Measures, after a 5 s warm-up of each server, with `pgbench -n -c $CLIENTS -j 2 -T $DURATION`
# in plain text:
#   - a point select (`SELECT abalance FROM pgbench_accounts WHERE aid = :aid`) in -M simple,
#     -M extended and -M prepared;
#   - a write transaction (UPDATE one account, INSERT into history, COMMIT), every COMMIT
#     durable on both (PostgreSQL: fsync and synchronous_commit on; db-server: synchronous=full);
#   - db-server's HTTP API point selects per second (wrk, a random id per request).
# Prints a table with the ratios. Needs: postgresql (initdb, pg_ctl, pgbench), psql, wrk, curl
# — installed if missing. Run as root or as a user who can run PostgreSQL.
set -euo pipefail
cd "$(dirname "$0")/.."
SCALE=${SCALE:-10}
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-8}
ROUNDS=${ROUNDS:-3}
[ "$ROUNDS" -ge 1 ] 2>/dev/null || { echo "ROUNDS must be a whole number, at least 1" >&2; exit 2; }
for tool in pgbench:postgresql psql:postgresql-client wrk:wrk curl:curl; do
  command -v "${tool%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tool#*:}" >&2
done
PGBIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

echo "building db-server (release)" >&2
cargo build --release --bin db-server >&2
BIN=$PWD/target/release/db-server

work=$(mktemp -d /tmp/quartet-bench-db.XXXXXX)
chmod 755 "$work"
PG_PORT=15432 Q_PORT=15433 Q_HTTP=15434
as_postgres=()
[ "$(id -u)" -eq 0 ] && as_postgres=(runuser -u postgres --)
cleanup() {
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
  "${as_postgres[@]}" "$PGBIN/pg_ctl" -D "$work/pg" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# PostgreSQL: a fresh cluster, defaults (fsync, synchronous_commit and full_page_writes on).
mkdir -p "$work/pg" && chown "$( [ -n "${as_postgres[*]}" ] && echo postgres || id -un )" "$work/pg"
"${as_postgres[@]}" "$PGBIN/initdb" -D "$work/pg" -U bench --auth=trust >/dev/null
"${as_postgres[@]}" "$PGBIN/pg_ctl" -D "$work/pg" -o "-p $PG_PORT -k $work/pg -c listen_addresses=127.0.0.1 -c max_connections=50" -l "$work/pg/server.log" -w start >/dev/null
pg() { "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U bench "$@"; }
echo "loading PostgreSQL (pgbench -i -s $SCALE)" >&2
pg -i -q -s "$SCALE" postgres >/dev/null 2>&1

# db-server: the same tables with SQLite DDL, the same rows.
env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/none" RUST_LOG=warn QUARTET__DATA_DIR="$work/q" \
  QUARTET__DB__PG_LISTEN=127.0.0.1:$Q_PORT QUARTET__DB__HTTP_LISTEN=127.0.0.1:$Q_HTTP \
  QUARTET__DB__MAX_CONNECTIONS=100 QUARTET__DB__STATEMENT_TIMEOUT_SECS=0 "$BIN" >"$work/db-server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$Q_HTTP/healthz" && break; sleep 0.1; done
q() { PGPASSWORD=quartet psql -X -q -h 127.0.0.1 -p "$Q_PORT" -U quartet quartet "$@"; }
rows=$((SCALE * 100000))
echo "loading db-server ($rows accounts)" >&2
q -c "CREATE TABLE pgbench_branches (bid INTEGER PRIMARY KEY, bbalance INTEGER, filler TEXT)" \
  -c "CREATE TABLE pgbench_tellers (tid INTEGER PRIMARY KEY, bid INTEGER, tbalance INTEGER, filler TEXT)" \
  -c "CREATE TABLE pgbench_accounts (aid INTEGER PRIMARY KEY, bid INTEGER, abalance INTEGER, filler TEXT)" \
  -c "CREATE TABLE pgbench_history (tid INTEGER, bid INTEGER, aid INTEGER, delta INTEGER, mtime TEXT, filler TEXT)" \
  -c "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $SCALE) INSERT INTO pgbench_branches SELECT x, 0, '' FROM n" \
  -c "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $((SCALE * 10))) INSERT INTO pgbench_tellers SELECT x, (x - 1) / 10 + 1, 0, '' FROM n" \
  -c "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < $rows) INSERT INTO pgbench_accounts SELECT x, (x - 1) / 100000 + 1, 0, printf('%84s', '') FROM n"
export PGPASSWORD=quartet
# Like for like: the fresh PostgreSQL cluster has no TLS, and db-server in development
# accepts TLS when a client asks (pgbench's default sslmode=prefer does), so both are
# measured in plain text over loopback.
export PGSSLMODE=disable

cat > "$work/select.sql" <<SQL
\set aid random(1, $rows)
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
SQL
cat > "$work/write.sql" <<SQL
\set aid random(1, $rows)
\set tid random(1, $((SCALE * 10)))
\set bid random(1, $SCALE)
\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
SQL

tps() { # port user db mode script -> tps
  "$PGBIN/pgbench" -h 127.0.0.1 -p "$1" -U "$2" -n -c "$CLIENTS" -j 2 -T "$DURATION" -M "$4" -f "$5" "$3" 2>/dev/null \
    | awk '/^tps = / {printf "%.0f", $3; found = 1} END {if (!found) printf "0"}' || true
}
# The loads' writes reach the disk before anything is measured (writeback would otherwise
# run during the first rounds).
sync
# Warm-up, not measured: each server's caches (PostgreSQL's shared buffers, db-server's
# connections' page caches and prepared statements) filled by the same reads first.
"$PGBIN/pgbench" -h 127.0.0.1 -p $PG_PORT -U bench -n -c "$CLIENTS" -j 2 -T 5 -M prepared -f "$work/select.sql" postgres >/dev/null 2>&1
"$PGBIN/pgbench" -h 127.0.0.1 -p $Q_PORT -U quartet -n -c "$CLIENTS" -j 2 -T 5 -M prepared -f "$work/select.sql" quartet >/dev/null 2>&1
# This machine's speed drifts by a third from one minute to the next, for both servers alike:
# each workload is measured ROUNDS times, the two servers back to back in each round (which
# one goes first alternates), and the table gives each server's median.
declare -A R ALL
median() { tr ' ' '\n' | awk 'NF' | sort -n | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)] + 0}'; }
both() { # round mode script -> "pg_tps q_tps", the first server alternating by round
  local pg_tps q_tps
  if [ $(($1 % 2)) -eq 1 ]; then
    pg_tps=$(tps $PG_PORT bench postgres "$2" "$3"); q_tps=$(tps $Q_PORT quartet quartet "$2" "$3")
  else
    q_tps=$(tps $Q_PORT quartet quartet "$2" "$3"); pg_tps=$(tps $PG_PORT bench postgres "$2" "$3")
  fi
  echo "${pg_tps:-0} ${q_tps:-0}"
}
for round in $(seq "$ROUNDS"); do
  for mode in simple extended prepared; do
    read -r pg_tps q_tps < <(both "$round" $mode "$work/select.sql")
    echo "round $round, point select -M $mode: PostgreSQL $pg_tps, db-server $q_tps" >&2
    ALL[pg.$mode]+=" $pg_tps"; ALL[q.$mode]+=" $q_tps"
  done
  read -r pg_tps q_tps < <(both "$round" simple "$work/write.sql")
  echo "round $round, write transaction: PostgreSQL $pg_tps, db-server $q_tps" >&2
  ALL[pg.write]+=" $pg_tps"; ALL[q.write]+=" $q_tps"
done
for key in "${!ALL[@]}"; do R[$key]=$(echo "${ALL[$key]}" | median); done

# The HTTP API: one point select per request, a random id each time.
cat > "$work/http.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic cXVhcnRldDpxdWFydGV0"
request = function()
  local body = '{"statements":[{"sql":"SELECT abalance FROM pgbench_accounts WHERE aid = ?","params":[' .. math.random(1, $rows) .. ']}]}'
  return wrk.format(nil, nil, nil, body)
end
LUA
echo "HTTP API point selects" >&2
R[http]=$(wrk -t2 -c"$CLIENTS" -d"${DURATION}s" -s "$work/http.lua" "http://127.0.0.1:$Q_HTTP/db/quartet/query" | awk '/Requests\/sec/ {printf "%.0f", $2}')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
cat <<TABLE
### Database — $(date -u +%Y-%m-%d) — \`SCALE=$SCALE DURATION=$DURATION CLIENTS=$CLIENTS ROUNDS=$ROUNDS bench/db.sh\`
2 cores; $("$PGBIN/postgres" --version); pgbench -n -c $CLIENTS -j 2 -T $DURATION on the same machine, plain text (PGSSLMODE=disable) to both; $rows accounts; db-server with synchronous=full. Medians of $ROUNDS rounds, the servers back to back in each (which goes first alternates); the HTTP API row is one run.

| workload | PostgreSQL TPS (rounds) | db-server TPS (rounds) | db-server / PostgreSQL | target |
| --- | ---: | ---: | ---: | --- |
| point select, -M simple | ${R[pg.simple]} (${ALL[pg.simple]# }) | ${R[q.simple]} (${ALL[q.simple]# }) | $(ratio "${R[q.simple]}" "${R[pg.simple]}") | ≥ 1.0 |
| point select, -M extended | ${R[pg.extended]} (${ALL[pg.extended]# }) | ${R[q.extended]} (${ALL[q.extended]# }) | $(ratio "${R[q.extended]}" "${R[pg.extended]}") | ≥ 1.0 |
| point select, -M prepared | ${R[pg.prepared]} (${ALL[pg.prepared]# }) | ${R[q.prepared]} (${ALL[q.prepared]# }) | $(ratio "${R[q.prepared]}" "${R[pg.prepared]}") | ≥ 1.0 |
| write transaction (UPDATE + INSERT + COMMIT) | ${R[pg.write]} (${ALL[pg.write]# }) | ${R[q.write]} (${ALL[q.write]# }) | $(ratio "${R[q.write]}" "${R[pg.write]}") | ≥ 0.8 |
| HTTP API point selects/s (wrk, $CLIENTS connections) | | ${R[http]} | | |
TABLE

