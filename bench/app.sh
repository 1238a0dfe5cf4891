#!/usr/bin/env bash
# App benchmark: app-server deploying and routing to a small Python app (bench/app), on the
# same machine in one run. app-server pinned to core 0 with its apps; wrk on core 1.
#
#   bench/app.sh                       # DURATION=10
#
# Measures: seconds from upload to the first 200 of the new release; requests/s and median
# latency through app-server's router against the app directly; failed requests (non-2xx and
# socket errors) under load across five redeploys and one rollback; time from `kill -9` of the
# web process to the app answering again. Needs: wrk, curl, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
command -v wrk >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends wrk >&2

echo "building app-server (release)" >&2
cargo build --release --bin app-server >&2
BIN=$PWD/target/release/app-server

work=$(mktemp -d /tmp/quartet-bench-app.XXXXXX)
chmod 755 "$work"   # apps run as an unprivileged user when this runs as root
API_PORT=17171 HTTP_PORT=17181
API=http://127.0.0.1:$API_PORT
AUTH="Authorization: Bearer dev"
taskset -c 0 env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/none" RUST_LOG=warn \
  QUARTET__DATA_DIR="$work/data" QUARTET__APP__API_LISTEN=127.0.0.1:$API_PORT \
  QUARTET__APP__HTTP_LISTEN=127.0.0.1:$HTTP_PORT "$BIN" >"$work/app-server.log" 2>&1 &
SERVER=$!
cleanup() { kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 100); do curl -sf -o /dev/null "$API/healthz" && break; sleep 0.1; done

tarball() { # version -> path of a tar.gz of bench/app with that VERSION
  local dir="$work/src-$1"
  mkdir -p "$dir"; cp bench/app/app.py bench/app/Procfile "$dir/"; echo "$1" > "$dir/VERSION"
  tar -czf "$work/$1.tar.gz" -C "$dir" .
  echo "$work/$1.tar.gz"
}
deploy() { curl -sf -o /dev/null -H "$AUTH" --data-binary "@$(tarball "$1")" "$API/apps/bench/builds"; }
via_router() { curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.localhost' "http://127.0.0.1:$HTTP_PORT/"; }

curl -sf -o /dev/null -H "$AUTH" -H 'Content-Type: application/json' -d '{"name":"bench"}' "$API/apps"

# 1. Upload to first 200 of the new release (no build step).
archive=$(tarball v1)
start=$(date +%s%N)
curl -sf -o /dev/null -H "$AUTH" --data-binary "@$archive" "$API/apps/bench/builds"
until [ "$(via_router)" = 200 ]; do sleep 0.005; done
upload_to_200=$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.3f", ns / 1e9 }')

# 2. Router against the app directly.
port=$(curl -s -H "$AUTH" "$API/apps/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processes"][0]["port"])')
wrk_stats() { # args... -> "req_per_s p50_ms"
  local out; out=$(taskset -c 1 wrk -t1 -c16 -d"${DURATION}s" --latency "$@")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '/^ +50%/ {v=$2; n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /[^m]s$/) n*=1000; print n}' <<<"$out")"
}
read -r direct_rps direct_p50 <<<"$(wrk_stats "http://127.0.0.1:$port/")"
read -r router_rps router_p50 <<<"$(wrk_stats -H 'Host: bench.localhost' "http://127.0.0.1:$HTTP_PORT/")"

# 3. Redeploys and a rollback under load.
taskset -c 1 wrk -t1 -c8 -d30s -H 'Host: bench.localhost' "http://127.0.0.1:$HTTP_PORT/" >"$work/load.txt" &
LOAD=$!
sleep 2
for v in v2 v3 v4 v5 v6; do deploy "$v"; sleep 1; done
curl -sf -o /dev/null -H "$AUTH" -d '{"version":1}' "$API/apps/bench/rollback"
wait $LOAD
load_requests=$(awk '/requests in/ {print $1}' "$work/load.txt")
non2xx=$(awk '/Non-2xx/ {print $NF}' "$work/load.txt"); non2xx=${non2xx:-0}
socket_errors=$(awk -F'[ ,]+' '/Socket errors/ {print $4+$6+$8+$10}' "$work/load.txt"); socket_errors=${socket_errors:-0}

# 4. kill -9 of the web process until the app answers again.
pid=$(ss -ltnpH "sport = :$(curl -s -H "$AUTH" "$API/apps/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processes"][0]["port"])')" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
start=$(date +%s%N)
kill -9 "$pid"
sleep 0.01
until [ "$(via_router)" = 200 ]; do sleep 0.005; done
back_after_kill=$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.3f", ns / 1e9 }')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
cat <<TABLE
### App — $(date -u +%Y-%m-%d) — \`DURATION=$DURATION bench/app.sh\`
2 cores; app-server and the app on core 0, wrk on core 1; the app is \`bench/app\` (Python ThreadingHTTPServer).

| measure | figure | target |
| --- | ---: | --- |
| upload → first 200 of the new release (s) | $(printf '%.2f' "$upload_to_200") | < 3 |
| requests/s, app directly (wrk, 16 connections) | $(printf '%.0f' "$direct_rps") | |
| requests/s, through app-server's router | $(printf '%.0f' "$router_rps") | |
| router / direct throughput | $(ratio "$router_rps" "$direct_rps") | ≥ 0.70 |
| median latency direct / via router (ms) | $direct_p50 / $router_p50 | router adds ≤ 0.2 ms |
| requests during 5 redeploys + 1 rollback (wrk, 8 connections, 30 s) | $load_requests | |
| failed: non-2xx + socket errors | $non2xx + $socket_errors | 0 |
| kill -9 of the web process → answering again (s) | $(printf '%.2f' "$back_after_kill") | < 1 |
TABLE
