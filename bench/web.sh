#!/usr/bin/env bash
# Web benchmark: nginx, Caddy and Quartet's web-server side by side on the same machine, same
# files, in one run. Each server is pinned to core 0, wrk/h2load to core 1; each figure is the
# median of RUNS runs. Prints a Markdown table with ratios (Quartet / anchor).
#
#   bench/web.sh                 # DURATION=10 RUNS=3 CONNS=64
#   DURATION=5 RUNS=1 bench/web.sh
#
# Needs: nginx caddy wrk nghttp2-client (h2load) openssl python3 — installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
RUNS=${RUNS:-3}
CONNS=${CONNS:-64}
IDLE=${IDLE:-10000}

need=()
for tool in nginx:nginx caddy:caddy wrk:wrk h2load:nghttp2-client openssl:openssl; do
  command -v "${tool%%:*}" >/dev/null || need+=("${tool#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
ulimit -n 65536 || true

echo "building web-server (release)" >&2
cargo build --release --bin web-server >&2
BIN=$PWD/target/release/web-server

work=$(mktemp -d /tmp/quartet-bench-web.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

# The same files for everyone, world-readable (nginx's worker runs as nobody).
mkdir -p "$work/www"
python3 - "$work/www" <<'PY'
import sys, os
root = sys.argv[1]
open(os.path.join(root, "1k.html"), "w").write(("<p>quartet benchmark</p>\n" * 64)[:1024])
open(os.path.join(root, "1m.bin"), "wb").write(bytes(i % 251 for i in range(1 << 20)))
PY
chmod -R a+rX "$work/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
chmod 644 "$work/key.pem" "$work/cert.pem"

P_NGINX=18101 P_NGINX_TLS=18102 P_NGINX_PROXY=18103 P_UPSTREAM=18104
P_CADDY=18111 P_CADDY_TLS=18112
P_QUARTET=18121 P_QUARTET_TLS=18122

cat > "$work/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx.pid;
error_log $work/nginx-error.log warn;
events { worker_connections 30000; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 10000000;
  keepalive_timeout 75s;
  client_body_temp_path $work/nginx-body;
  proxy_temp_path $work/nginx-proxy;
  fastcgi_temp_path $work/nginx-fastcgi;
  uwsgi_temp_path $work/nginx-uwsgi;
  scgi_temp_path $work/nginx-scgi;
  types { text/html html; application/octet-stream bin; }
  server { listen 127.0.0.1:$P_NGINX; root $work/www; }
  server {
    listen 127.0.0.1:$P_NGINX_TLS ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    root $work/www;
  }
  # The "small upstream" both proxies forward to.
  server { listen 127.0.0.1:$P_UPSTREAM; location / { return 200 "hello from upstream\n"; } }
  upstream app { server 127.0.0.1:$P_UPSTREAM; keepalive 64; }
  server {
    listen 127.0.0.1:$P_NGINX_PROXY;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
NGINX

cat > "$work/Caddyfile" <<CADDY
{
  admin off
  auto_https off
  storage file_system $work/caddy
}
http://127.0.0.1:$P_CADDY {
  root * $work/www
  file_server
}
https://localhost:$P_CADDY_TLS {
  tls $work/cert.pem $work/key.pem
  root * $work/www
  file_server
}
CADDY

cat > "$work/quartet.toml" <<QUARTET
[tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[web]
http_listen = "127.0.0.1:$P_QUARTET"
https_listen = "127.0.0.1:$P_QUARTET_TLS"
access_log = false
header_timeout_secs = 75
max_connections = 30000
[[web.sites]]
root = "$work/www"
[[web.sites.proxy]]
path = "/proxy"
upstreams = ["http://127.0.0.1:$P_UPSTREAM"]
QUARTET

start() { # name, command... — sets STARTED to the pid (no subshell, so cleanup sees it)
  local name=$1; shift
  taskset -c 0 "$@" >"$work/$name.log" 2>&1 &
  STARTED=$!
  pids+=("$STARTED")
}
wait_port() {
  for _ in $(seq 100); do
    curl -s -o /dev/null -k "$1" && return 0
    sleep 0.1
  done
  echo "no answer from $1" >&2; cat "$work"/*.log >&2; exit 1
}

for port in $P_NGINX $P_NGINX_TLS $P_NGINX_PROXY $P_UPSTREAM $P_CADDY $P_CADDY_TLS $P_QUARTET $P_QUARTET_TLS; do
  if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then
    echo "port $port is already in use: stop whatever listens there first" >&2; exit 1
  fi
done
start nginx nginx -c "$work/nginx.conf" -p "$work"; NGINX_PID=$STARTED
start caddy env HOME="$work" XDG_DATA_HOME="$work" XDG_CONFIG_HOME="$work" caddy run --config "$work/Caddyfile" --adapter caddyfile; CADDY_PID=$STARTED
start quartet env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/none" RUST_LOG=warn "$BIN" --config "$work/quartet.toml"; QUARTET_PID=$STARTED
wait_port "http://127.0.0.1:$P_NGINX/1k.html"
wait_port "http://127.0.0.1:$P_CADDY/1k.html"
wait_port "http://127.0.0.1:$P_QUARTET/1k.html"
wait_port "https://localhost:$P_QUARTET_TLS/1k.html"
wait_port "http://127.0.0.1:$P_UPSTREAM/"
# Every server must serve the real files (a stale server on a port would not).
for port in $P_NGINX $P_CADDY $P_QUARTET; do
  size=$(curl -s -o /dev/null -w '%{size_download}' "http://127.0.0.1:$port/1m.bin")
  [ "$size" = 1048576 ] || { echo "port $port served $size bytes for 1m.bin" >&2; exit 1; }
done

median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# wrk requests/s and MB/s for URL, median of RUNS.
wrk_run() { # url connections -> "req_per_s mb_per_s latency_ms"
  local url=$1 conns=$2 rps=() mbs=() lat=()
  for _ in $(seq "$RUNS"); do
    out=$(taskset -c 1 wrk -t1 -c"$conns" -d"${DURATION}s" --latency "$url")
    rps+=("$(awk '/Requests\/sec/ {print $2}' <<<"$out")")
    mbs+=("$(awk '/Transfer\/sec/ {v=$2; u=substr(v,length(v)-1); n=v+0; if (u=="GB") n*=1024; else if (u=="KB") n/=1024; else if (u!="MB") n/=1048576; print n}' <<<"$out")")
    lat+=("$(awk '/Latency/ && NR<5 {v=$2; n=v+0; if (v ~ /us$/) n/=1000; else if (v ~ /[^m]s$/) n*=1000; print n; exit}' <<<"$out")")
  done
  echo "$(printf '%s\n' "${rps[@]}" | median) $(printf '%s\n' "${mbs[@]}" | median) $(printf '%s\n' "${lat[@]}" | median)"
}
h2_run() { # url -> req_per_s
  local url=$1 rps=()
  for _ in $(seq "$RUNS"); do
    out=$(taskset -c 1 h2load -t1 -c"$CONNS" -m10 -D "$DURATION" "$url" 2>/dev/null)
    rps+=("$(awk '/finished in/ {for (i=1;i<=NF;i++) if ($i=="req/s,") print $(i-1)}' <<<"$out")")
  done
  printf '%s\n' "${rps[@]}" | median
}
rss_kb() { # pids... -> total VmRSS in KiB (nginx: master + worker)
  local total=0
  for p in "$@"; do
    for q in $p $(pgrep -P "$p" || true); do
      total=$((total + $(awk '/VmRSS/ {print $2}' "/proc/$q/status" 2>/dev/null || echo 0)))
    done
  done
  echo $total
}
idle_kb_per_10k() { # port pid -> KiB per 10,000 idle keep-alive connections
  local port=$1 pid=$2 before after
  before=$(rss_kb "$pid")
  python3 - "$port" "$IDLE" "$work/idle.ready" <<'PY' &
import socket, sys, time
port, count, ready = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(count):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"GET /1k.html HTTP/1.1\r\nHost: localhost\r\n\r\n")
    socks.append(s)
for s in socks:
    got = b""
    while b"\r\n\r\n" not in got or len(got) < 1024:
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
open(ready, "w").write("ok")
time.sleep(30)
PY
  local client=$!
  for _ in $(seq 300); do [ -f "$work/idle.ready" ] && break; sleep 0.1; done
  sleep 1
  after=$(rss_kb "$pid")
  kill $client 2>/dev/null || true; wait $client 2>/dev/null || true
  rm -f "$work/idle.ready"
  echo "$(( (after - before) * 10000 / IDLE )) $((after / 1024))"
}

echo "measuring (each figure: median of $RUNS x ${DURATION}s)" >&2
declare -A R
for s in nginx:$P_NGINX:$P_NGINX_TLS caddy:$P_CADDY:$P_CADDY_TLS quartet:$P_QUARTET:$P_QUARTET_TLS; do
  IFS=: read -r name port tls <<<"$s"
  echo "  $name 1 KiB" >&2;  read -r R[$name.1k] _ _ <<<"$(wrk_run "http://127.0.0.1:$port/1k.html" "$CONNS")"
  echo "  $name 1 MiB" >&2;  read -r R[$name.1m] R[$name.1m_mb] _ <<<"$(wrk_run "http://127.0.0.1:$port/1m.bin" "$CONNS")"
  echo "  $name h2 TLS" >&2; R[$name.h2]=$(h2_run "https://localhost:$tls/1k.html")
done
echo "  proxy overhead" >&2
read -r R[direct.rps] _ R[direct.lat] <<<"$(wrk_run "http://127.0.0.1:$P_UPSTREAM/" 1)"
read -r R[nginxp.rps] _ R[nginxp.lat] <<<"$(wrk_run "http://127.0.0.1:$P_NGINX_PROXY/proxy" 1)"
read -r R[quartetp.rps] _ R[quartetp.lat] <<<"$(wrk_run "http://127.0.0.1:$P_QUARTET/proxy" 1)"
read -r R[nginxp64.rps] _ _ <<<"$(wrk_run "http://127.0.0.1:$P_NGINX_PROXY/proxy" "$CONNS")"
read -r R[quartetp64.rps] _ _ <<<"$(wrk_run "http://127.0.0.1:$P_QUARTET/proxy" "$CONNS")"
echo "  memory per $IDLE idle keep-alive connections" >&2
read -r R[nginx.idle] R[nginx.rss] <<<"$(idle_kb_per_10k "$P_NGINX" "$NGINX_PID")"
read -r R[caddy.idle] R[caddy.rss] <<<"$(idle_kb_per_10k "$P_CADDY" "$CADDY_PID")"
read -r R[quartet.idle] R[quartet.rss] <<<"$(idle_kb_per_10k "$P_QUARTET" "$QUARTET_PID")"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
fmt() { awk -v a="$1" 'BEGIN { printf "%.0f", a }'; }
cat <<TABLE
### Web — $(date -u +%Y-%m-%d) — \`DURATION=$DURATION RUNS=$RUNS CONNS=$CONNS bench/web.sh\`
$(nginx -v 2>&1 | sed 's/^/    /'); caddy $(caddy version | cut -d' ' -f1); $(wrk -v 2>&1 | head -1 | cut -d' ' -f1-2); 2 cores, servers on core 0, load on core 1.

| measure | nginx | Caddy | Quartet | Quartet/nginx | Quartet/Caddy |
| --- | ---: | ---: | ---: | ---: | ---: |
| 1 KiB file, req/s (wrk, $CONNS conns) | $(fmt ${R[nginx.1k]}) | $(fmt ${R[caddy.1k]}) | $(fmt ${R[quartet.1k]}) | $(ratio ${R[quartet.1k]} ${R[nginx.1k]}) | $(ratio ${R[quartet.1k]} ${R[caddy.1k]}) |
| 1 MiB file, req/s | $(fmt ${R[nginx.1m]}) | $(fmt ${R[caddy.1m]}) | $(fmt ${R[quartet.1m]}) | $(ratio ${R[quartet.1m]} ${R[nginx.1m]}) | $(ratio ${R[quartet.1m]} ${R[caddy.1m]}) |
| 1 MiB file, MB/s | $(fmt ${R[nginx.1m_mb]}) | $(fmt ${R[caddy.1m_mb]}) | $(fmt ${R[quartet.1m_mb]}) | $(ratio ${R[quartet.1m_mb]} ${R[nginx.1m_mb]}) | $(ratio ${R[quartet.1m_mb]} ${R[caddy.1m_mb]}) |
| 1 KiB over TLS, HTTP/2, req/s (h2load, $CONNS conns x 10 streams) | $(fmt ${R[nginx.h2]}) | $(fmt ${R[caddy.h2]}) | $(fmt ${R[quartet.h2]}) | $(ratio ${R[quartet.h2]} ${R[nginx.h2]}) | $(ratio ${R[quartet.h2]} ${R[caddy.h2]}) |
| KiB of memory added per 10,000 idle keep-alive connections | ${R[nginx.idle]} | ${R[caddy.idle]} | ${R[quartet.idle]} | $(ratio ${R[quartet.idle]} ${R[nginx.idle]}) | $(ratio ${R[quartet.idle]} ${R[caddy.idle]}) |
| MiB resident with $IDLE idle connections open (nginx: master + worker) | ${R[nginx.rss]} | ${R[caddy.rss]} | ${R[quartet.rss]} | $(ratio ${R[quartet.rss]} ${R[nginx.rss]}) | $(ratio ${R[quartet.rss]} ${R[caddy.rss]}) |

Reverse proxy to the same small upstream (nginx \`return 200\`, upstream keep-alive on both):

| measure | upstream direct | via nginx | via Quartet | Quartet/direct | Quartet/nginx |
| --- | ---: | ---: | ---: | ---: | ---: |
| mean latency, 1 connection (ms) | ${R[direct.lat]} | ${R[nginxp.lat]} | ${R[quartetp.lat]} | $(ratio ${R[quartetp.lat]} ${R[direct.lat]}) | $(ratio ${R[quartetp.lat]} ${R[nginxp.lat]}) |
| req/s, 1 connection | $(fmt ${R[direct.rps]}) | $(fmt ${R[nginxp.rps]}) | $(fmt ${R[quartetp.rps]}) | $(ratio ${R[quartetp.rps]} ${R[direct.rps]}) | $(ratio ${R[quartetp.rps]} ${R[nginxp.rps]}) |
| req/s, $CONNS connections | | $(fmt ${R[nginxp64.rps]}) | $(fmt ${R[quartetp64.rps]}) | | $(ratio ${R[quartetp64.rps]} ${R[nginxp64.rps]}) |
TABLE
