#!/usr/bin/env bash
# Mail benchmark: Postfix (Debian's package) and Quartet's mail-server on the same machine in
# one run, both taking mail over SMTP into a local mailbox.
#
#   bench/mail.sh                      # MESSAGES=20000 BIG_MESSAGES=20000 (the issue's -m 20000 for both sizes)
#
# Postfix delivers with local(8) into a Maildir (an alias to a directory; every message
# fsynced, as it does by default); mail-server stores into its SQLite store (every 250 after an fsync). The load is
# Postfix's own smtp-source with -s 1, 10 and 50 sessions, MESSAGES messages of 1 KiB and
# BIG_MESSAGES of 100 KiB; the figure is messages accepted per second (smtp-source's
# wall time), and the ratio. Then the durability run: 8 clients send to mail-server and record
# every Message-ID that got its 250, mail-server is killed with SIGKILL mid-run and restarted,
# and the acknowledged messages missing from the store are counted (must be 0).
#
# Needs root: it installs postfix if missing and reconfigures this machine's Postfix instance
# (loopback only, port 2526, a scratch Maildir), stopping it at the end. Run it on a bench
# machine, not on a server whose Postfix carries mail.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-20000}
BIG_MESSAGES=${BIG_MESSAGES:-20000}
POSTFIX_PORT=2526 Q_SMTP=12525 Q_HTTP=18025

if ! command -v smtp-source >/dev/null && [ ! -x /usr/sbin/smtp-source ]; then
  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postfix >&2
fi
PATH=$PATH:/usr/sbin

echo "building mail-server (release)" >&2
cargo build --release --bin mail-server >&2
BIN=$PWD/target/release/mail-server

work=$(mktemp -d /tmp/quartet-bench-mail.XXXXXX)
chmod 755 "$work"
cleanup() {
  postfix stop >/dev/null 2>&1 || true
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Postfix: example.test is a local domain (mydestination), so local(8) delivers; alice is an
# alias for a Maildir (a path ending in "/"), written as default_privs (nobody).
mkdir -p "$work/maildir/alice"
chown -R nobody:nogroup "$work/maildir"
echo "alice: $work/maildir/alice/" > "$work/aliases"
postalias "$work/aliases"
[ -f /etc/postfix/main.cf ] || touch /etc/postfix/main.cf
postconf -e "myhostname=bench.localdomain" "mydestination=example.test" "inet_interfaces=loopback-only" \
  "inet_protocols=ipv4" "virtual_mailbox_domains=" "relay_domains=" \
  "alias_maps=hash:$work/aliases" "alias_database=hash:$work/aliases" "local_recipient_maps=\$alias_maps" \
  "mailbox_size_limit=0" "message_size_limit=52428800" "smtpd_recipient_restrictions=permit_mynetworks,reject" \
  "mynetworks=127.0.0.0/8" "default_process_limit=200"
postconf -Me "127.0.0.1:$POSTFIX_PORT/inet=127.0.0.1:$POSTFIX_PORT inet n - n - - smtpd"
postfix stop >/dev/null 2>&1 || true
postfix start >/dev/null 2>&1
postsuper -d ALL >/dev/null 2>&1 || true

# mail-server: the same domain and account.
mkdir -p "$work/config"
cat > "$work/config/default.toml" <<EOF
[mail]
domains = ["example.test"]
[[mail.accounts]]
address = "alice@example.test"
password = "alice-pw"
EOF
start_server() {
  env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/config" RUST_LOG=warn QUARTET__DATA_DIR="$work/q" \
    QUARTET__MAIL__SMTP_LISTEN=127.0.0.1:$Q_SMTP QUARTET__MAIL__HTTP_LISTEN=127.0.0.1:$Q_HTTP \
    QUARTET__MAIL__SUBMISSION_LISTEN=127.0.0.1:0 QUARTET__MAIL__SUBMISSIONS_LISTEN=127.0.0.1:0 \
    QUARTET__MAIL__IMAP_LISTEN=127.0.0.1:0 QUARTET__MAIL__IMAPS_LISTEN=127.0.0.1:0 \
    QUARTET__MAIL__POP3_LISTEN=127.0.0.1:0 QUARTET__MAIL__POP3S_LISTEN=127.0.0.1:0 \
    QUARTET__MAIL__MAX_CONNECTIONS_PER_IP=200 "$BIN" >>"$work/mail-server.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$Q_HTTP/healthz" && return; sleep 0.1; done
  echo "mail-server did not start" >&2; cat "$work/mail-server.log" >&2; exit 1
}
start_server

# Messages per second that smtp-source reaches against PORT.
rate() {
  local port=$1 sessions=$2 count=$3 size=$4 start end
  start=$(date +%s.%N)
  smtp-source -s "$sessions" -m "$count" -l "$size" -f ann@remote.test -t alice@example.test \
    "127.0.0.1:$port" >/dev/null
  end=$(date +%s.%N)
  echo "$count / ($end - $start)" | bc -l
}

# Postfix's queue must be empty before the next run, so its deliveries do not weigh on it.
drain_postfix() {
  for _ in $(seq 600); do
    [ -z "$(find /var/spool/postfix/active /var/spool/postfix/incoming /var/spool/postfix/deferred -type f 2>/dev/null | head -1)" ] && return
    sleep 0.2
  done
}

# Messages in mail-server's store (read-only; WAL readers do not disturb the writer).
stored() {
  python3 -c 'import sqlite3, sys; print(sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True).execute("SELECT count(*) FROM messages").fetchone()[0])' "$work/q/mail/mail.db"
}
sent=0
rows=()
for size_count in "1024:$MESSAGES" "102400:$BIG_MESSAGES"; do
  size=${size_count%%:*} count=${size_count##*:}
  for sessions in 1 10 50; do
    echo "smtp-source -s $sessions -m $count -l $size" >&2
    # Each run starts with nothing left for the kernel to write back from the one before
    # (Postfix's deliveries continue after smtp-source ends; their dirty pages would otherwise
    # be flushed during mail-server's run and slow its fsyncs).
    sync; p=$(rate $POSTFIX_PORT "$sessions" "$count" "$size"); drain_postfix
    sync; q=$(rate $Q_SMTP "$sessions" "$count" "$size")
    sent=$((sent + count))
    rows+=("| $((size / 1024)) KiB, -s $sessions, -m $count | $(printf %.0f "$p") | $(printf %.0f "$q") | $(printf %.2f "$(echo "$q / $p" | bc -l)") |")
  done
done

kept=$(stored)

# Durability: acknowledged Message-IDs recorded by the client, SIGKILL, restart, count.
echo "durability run" >&2
python3 mail-server/tests/clients/send_until_killed.py "$Q_SMTP" "$work/acknowledged.txt" &
CLIENT=$!
sleep 3
kill -9 "$SERVER"; wait "$SERVER" 2>/dev/null || true
wait "$CLIENT" || true
start_server
kill "$SERVER"; wait "$SERVER" 2>/dev/null || true; SERVER=
acknowledged=$(wc -l < "$work/acknowledged.txt")
missing=$(python3 - "$work/q/mail/mail.db" "$work/acknowledged.txt" <<'EOF'
import sqlite3, sys
stored = {row[0] for row in sqlite3.connect(sys.argv[1]).execute("SELECT message_id FROM messages")}
sent = [line.strip().strip("<>") for line in open(sys.argv[2]) if line.strip()]
print(sum(1 for mid in sent if mid not in stored))
EOF
)

echo
echo "### Mail — $(date +%F) — \`MESSAGES=$MESSAGES BIG_MESSAGES=$BIG_MESSAGES bench/mail.sh\`"
echo "2 cores; $(postconf -d mail_version | sed 's/ = / /') with local(8) to Maildir; mail-server (SQLite store, group commit); load from smtp-source on the same machine."
echo
echo "| load | Postfix msg/s | mail-server msg/s | mail-server / Postfix |"
echo "| --- | ---: | ---: | ---: |"
printf '%s\n' "${rows[@]}"
echo
echo "Durability: $acknowledged messages acknowledged before \`kill -9\`, $missing of them missing after restart."
echo "mail-server stored $kept of the $sent messages smtp-source sent it (counted in its store before the durability run)."
echo "Postfix delivered $(find "$work/maildir/alice/new" -type f | wc -l) of $sent messages into the Maildir (checked after its queue emptied)."
