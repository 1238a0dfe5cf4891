#!/usr/bin/env bash
# App benchmark: app-server deploying and routing to a small Python app (bench/app), with nginx
# proxying to the same app as the yardstick, on the same machine in one run.
#
#   bench/app.sh                       # DURATION=10 RATE=1600
#
# Measures: seconds from upload to the first 200 of the new release; requests/s and median
# latency through app-server's router and through nginx against the app directly (wrk, 16
# connections), in two layouts of the 2 cores: "app alone" (the app on core 0; wrk and the
# proxy on core 1) and "shared" (the app and the proxy on core 0; wrk on core 1); failed
# requests (non-2xx and errors) under a fixed-rate load (hey, RATE requests/s) across five
# redeploys and one rollback; time from `kill -9` of the web process to the app answering
# again. Needs: wrk, hey, nginx, curl, python3 — installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
RATE=${RATE:-1600}
for tool in wrk:wrk hey:hey nginx:nginx; do
  command -v "${tool%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${tool#*:}" >&2
done

echo "building app-server (release)" >&2
cargo build --release --bin app-server >&2
BIN=$PWD/target/release/app-server

work=$(mktemp -d /tmp/quartet-bench-app.XXXXXX)
chmod 755 "$work"   # apps run as an unprivileged user when this runs as root
API_PORT=17171 HTTP_PORT=17181
API=http://127.0.0.1:$API_PORT
AUTH="Authorization: Bearer dev"
taskset -c 1 env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/none" RUST_LOG=warn \
  QUARTET__DATA_DIR="$work/data" QUARTET__APP__API_LISTEN=127.0.0.1:$API_PORT \
  QUARTET__APP__HTTP_LISTEN=127.0.0.1:$HTTP_PORT "$BIN" >"$work/app-server.log" 2>&1 &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  rm -rf "$work"
}
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

# 2. Router and nginx against the app directly, in both layouts.
port=$(curl -s -H "$AUTH" "$API/apps/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processes"][0]["port"])')
app_pid=$(ss -ltnpH "sport = :$port" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
NGINX_PORT=17191
mkdir -p "$work/nginx"
cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
pid $work/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx; proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx; uwsgi_temp_path $work/nginx; scgi_temp_path $work/nginx;
  upstream app { server 127.0.0.1:$port; keepalive 32; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }
}
NGINX
taskset -c 1 nginx -c "$work/nginx.conf" -p "$work"
for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$NGINX_PORT/" && break; sleep 0.1; done
pin() { # core pid... : every thread of each process onto that core
  local core=$1; shift
  for p in "$@"; do taskset -a -p -c "$core" "$p" >/dev/null; done
}
wrk_stats() { # args... -> "req_per_s p50_ms"
  local out; out=$(taskset -c 1 wrk -t1 -c16 -d"${DURATION}s" --latency "$@")
  echo "$(awk '/Requests\/sec/ {print $2}' <<<"$out") $(awk '/^ +50%/ {v=$2; n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /[^m]s$/) n*=1000; print n}' <<<"$out")"
}
declare -A R
measure() { # layout
  read -r R[$1.direct.rps] R[$1.direct.p50] <<<"$(wrk_stats "http://127.0.0.1:$port/")"
  read -r R[$1.router.rps] R[$1.router.p50] <<<"$(wrk_stats -H 'Host: bench.localhost' "http://127.0.0.1:$HTTP_PORT/")"
  read -r R[$1.nginx.rps] R[$1.nginx.p50] <<<"$(wrk_stats "http://127.0.0.1:$NGINX_PORT/")"
}
nginx_pids=$(pgrep -f "nginx: (master|worker) process" | tr '\n' ' ')
pin 0 "$app_pid"; pin 1 "$SERVER" $nginx_pids
measure alone
pin 0 "$app_pid" "$SERVER" $nginx_pids
measure shared
pin 1 "$SERVER"; pin 0 "$app_pid"
kill "$(cat "$work/nginx.pid")"

# 3. Redeploys and a rollback under a fixed-rate load: hey, 16 workers at RATE/16 requests/s
# each, 30 s; every response that is not 2xx and every error counts as failed.
taskset -c 1 hey -z 30s -c 16 -q $((RATE / 16)) -host bench.localhost "http://127.0.0.1:$HTTP_PORT/" >"$work/load.txt" &
LOAD=$!
sleep 2
for v in v2 v3 v4 v5 v6; do deploy "$v"; sleep 1; done
curl -sf -o /dev/null -H "$AUTH" -d '{"version":1}' "$API/apps/bench/rollback"
wait $LOAD
load_ok=$(awk '/^ +\[2[0-9][0-9]\]/ {s += $2} END {print s + 0}' "$work/load.txt")
non2xx=$(awk '/^ +\[[13-5][0-9][0-9]\]/ {s += $2} END {print s + 0}' "$work/load.txt")
errors=$(awk '/^Error distribution:/ {on = 1; next} on && /^ +\[[0-9]+\]/ {gsub(/[\[\]]/, "", $1); s += $1} END {print s + 0}' "$work/load.txt")
load_rps=$(awk '/Requests\/sec:/ {print $2}' "$work/load.txt")

# 4. kill -9 of the web process until the app answers again.
pid=$(ss -ltnpH "sport = :$(curl -s -H "$AUTH" "$API/apps/bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["processes"][0]["port"])')" | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
start=$(date +%s%N)
kill -9 "$pid"
sleep 0.01
until [ "$(via_router)" = 200 ]; do sleep 0.005; done
back_after_kill=$(awk -v ns=$(( $(date +%s%N) - start )) 'BEGIN { printf "%.3f", ns / 1e9 }')

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
added() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f", a - b }'; }
row() { # layout label
  local l=$1
  echo "| $2 | $(printf '%.0f' "${R[$l.direct.rps]}") | $(printf '%.0f' "${R[$l.router.rps]}") | $(printf '%.0f' "${R[$l.nginx.rps]}") | $(ratio "${R[$l.router.rps]}" "${R[$l.direct.rps]}") | $(ratio "${R[$l.nginx.rps]}" "${R[$l.direct.rps]}") | ${R[$l.direct.p50]} | $(added "${R[$l.router.p50]}" "${R[$l.direct.p50]}") | $(added "${R[$l.nginx.p50]}" "${R[$l.direct.p50]}") |"
}
cat <<TABLE
### App — $(date -u +%Y-%m-%d) — \`DURATION=$DURATION RATE=$RATE bench/app.sh\`
2 cores; the app is \`bench/app\` (Python ThreadingHTTPServer); $(nginx -v 2>&1 | sed 's/.*: //'); wrk with 16 connections for $DURATION s per figure.

| layout | direct req/s | router req/s | nginx req/s | router/direct | nginx/direct | direct p50 ms | router adds ms | nginx adds ms |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
$(row alone "app alone on core 0; wrk + proxy on core 1")
$(row shared "app + proxy on core 0; wrk on core 1")

| measure | figure | target |
| --- | ---: | --- |
| upload → first 200 of the new release (s) | $(printf '%.2f' "$upload_to_200") | < 3 |
| fixed-rate load during 5 redeploys + 1 rollback (hey, 30 s, offered $RATE req/s; achieved) | $load_rps req/s, $load_ok 2xx | |
| failed: non-2xx + errors | $non2xx + $errors | 0 |
| kill -9 of the web process → answering again (s) | $(printf '%.2f' "$back_after_kill") | < 1 |
TABLE
