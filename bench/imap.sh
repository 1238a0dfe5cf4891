#!/usr/bin/env bash
# IMAP benchmark: Dovecot (Debian's package) and Quartet's mail-server on the same machine in
# one run, serving the same mailbox of MESSAGES messages.
#
#   bench/imap.sh                      # MESSAGES=10000 CLIENTS=10 DURATION=10 RUNS=3
#
# The messages (1 to 12 KiB, a sixth of them multipart with an attachment) are written once;
# Dovecot gets them as files in a Maildir, mail-server over SMTP into its store. Both are
# asked the same by bench/imap_client.py, a plain-socket client that costs the same against
# either server:
#   1. one client logs in, SELECTs INBOX and UID FETCHes 1:* (UID FLAGS BODY.PEEK[HEADER]):
#      seconds from SELECT to the last header (RUNS runs after a warm-up; best and median);
#   2. CLIENTS clients each FETCH BODY.PEEK[] of random messages for DURATION s: messages per
#      second, all clients together (RUNS rounds, the servers taking turns; the best of each).
# Plaintext IMAP on loopback for both (TLS would cost both the same).
#
# Needs root: it installs dovecot-imapd if missing and runs a private Dovecot instance from a
# scratch directory (its own config and ports; the system's Dovecot is not touched).
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${MESSAGES:-10000}
CLIENTS=${CLIENTS:-10}
SECONDS_PER_RUN=${DURATION:-10}
RUNS=${RUNS:-3}
DOVECOT_PORT=11143 Q_IMAP=12143 Q_SMTP=12526 Q_HTTP=18026

if ! command -v dovecot >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends dovecot-imapd >&2
fi

echo "building mail-server (release)" >&2
cargo build --release --bin mail-server >&2
BIN=$PWD/target/release/mail-server
PY=/usr/bin/python3

work=$(mktemp -d /tmp/quartet-bench-imap.XXXXXX)
chmod 755 "$work"
cleanup() {
  [ -n "${DOVECOT_PID:-}" ] && kill "$DOVECOT_PID" 2>/dev/null || true
  [ -n "${SERVER:-}" ] && kill "$SERVER" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "writing $MESSAGES messages" >&2
mkdir -p "$work/messages"
$PY - "$work/messages" "$MESSAGES" <<'EOF'
import base64, os, random, sys
out, count = sys.argv[1], int(sys.argv[2])
rng = random.Random(42)
words = "alpha beta gamma delta report budget meeting lunch invoice project update review".split()
for n in range(1, count + 1):
    subject = " ".join(rng.choice(words) for _ in range(rng.randint(2, 7)))
    body = "\r\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(rng.randint(10, 120)))
    head = (f"From: Sender {n % 97} <sender{n % 97}@remote.test>\r\nTo: alice@example.test\r\n"
            f"Subject: {subject}\r\nDate: Tue, 24 Nov 2026 10:{n % 60:02d}:00 +0000\r\n"
            f"Message-ID: <bench{n}@remote.test>\r\nMIME-Version: 1.0\r\n")
    if n % 6 == 0:
        attachment = base64.encodebytes(rng.randbytes(rng.randint(1000, 4000))).decode().replace("\n", "\r\n")
        text = (head + 'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
                "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n--b\r\n"
                'Content-Type: application/octet-stream; name="data.bin"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n" + attachment + "--b--\r\n")
    else:
        text = head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n"
    with open(os.path.join(out, f"{n:06d}.eml"), "w", newline="") as f:
        f.write(text)
EOF

# Dovecot: a private instance, one passwd-file user, the messages as a Maildir.
D=$work/dovecot
mkdir -p "$D/run" "$D/state" "$D/home/alice/Maildir/cur" "$D/home/alice/Maildir/new" "$D/home/alice/Maildir/tmp"
i=0
for f in "$work"/messages/*.eml; do
  i=$((i + 1))
  cp "$f" "$D/home/alice/Maildir/cur/1700000000.M${i}P1.bench,S=$(stat -c %s "$f"):2,"
done
chown -R nobody:nogroup "$D/home"
echo "alice@example.test:{PLAIN}alice-pw" > "$D/passwd"
cat > "$D/dovecot.conf" <<EOF
protocols = imap
listen = 127.0.0.1
base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
first_valid_uid = 1
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $D/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$D/home/alice
}
service imap-login {
  inet_listener imap {
    address = 127.0.0.1
    port = $DOVECOT_PORT
  }
  inet_listener imaps {
    port = 0
  }
}
service imap {
  process_limit = 64
}
EOF
dovecot -c "$D/dovecot.conf" -F &
DOVECOT_PID=$!

# mail-server: the same account; the messages in over SMTP.
mkdir -p "$work/config"
cat > "$work/config/default.toml" <<EOF
[mail]
domains = ["example.test"]
[[mail.accounts]]
address = "alice@example.test"
password = "alice-pw"
EOF
env -i PATH="$PATH" QUARTET_CONFIG_DIR="$work/config" RUST_LOG=warn QUARTET__DATA_DIR="$work/q" \
  QUARTET__MAIL__SMTP_LISTEN=127.0.0.1:$Q_SMTP QUARTET__MAIL__HTTP_LISTEN=127.0.0.1:$Q_HTTP \
  QUARTET__MAIL__IMAP_LISTEN=127.0.0.1:$Q_IMAP \
  QUARTET__MAIL__SUBMISSION_LISTEN=127.0.0.1:0 QUARTET__MAIL__SUBMISSIONS_LISTEN=127.0.0.1:0 \
  QUARTET__MAIL__IMAPS_LISTEN=127.0.0.1:0 \
  QUARTET__MAIL__POP3_LISTEN=127.0.0.1:0 QUARTET__MAIL__POP3S_LISTEN=127.0.0.1:0 \
  QUARTET__MAIL__MAX_CONNECTIONS_PER_IP=200 "$BIN" >>"$work/mail-server.log" 2>&1 &
SERVER=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$Q_HTTP/healthz" && break; sleep 0.1; done
echo "delivering $MESSAGES messages to mail-server over SMTP" >&2
$PY - "$work/messages" "$Q_SMTP" <<'EOF'
import concurrent.futures, os, smtplib, sys
folder, port = sys.argv[1], int(sys.argv[2])
files = sorted(os.listdir(folder))
def send(chunk):
    smtp = smtplib.SMTP("127.0.0.1", port, timeout=60)
    for name in chunk:
        with open(os.path.join(folder, name), "rb") as f:
            smtp.sendmail("sender@remote.test", ["alice@example.test"], f.read())
    smtp.quit()
# In file order, one sender: the UIDs follow the files, as Dovecot's Maildir does.
send(files)
EOF
for _ in $(seq 50); do
  $PY bench/imap_client.py headers $DOVECOT_PORT alice@example.test alice-pw 1 >/dev/null 2>&1 && break
  sleep 0.2
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
best() { sort -n | head -1; }
port_of() { if [ "$1" = dovecot ]; then echo $DOVECOT_PORT; else echo $Q_IMAP; fi; }
declare -A select_best select_median fetch_rate fetch_all
for server in dovecot mail-server; do
  port=$(port_of $server)
  echo "$server: SELECT + FETCH of all headers (warm-up, then $RUNS runs)" >&2
  $PY bench/imap_client.py headers $port alice@example.test alice-pw 1 >/dev/null
  runs=$($PY bench/imap_client.py headers $port alice@example.test alice-pw "$RUNS")
  count=$(echo "$runs" | awk '{print $2}' | head -1)
  [ "$count" = "$MESSAGES" ] || { echo "$server answered $count FETCH responses, not $MESSAGES" >&2; exit 1; }
  select_best[$server]=$(echo "$runs" | awk '{print $1}' | best)
  select_median[$server]=$(echo "$runs" | awk '{print $1}' | median)
done
# Concurrent fetches take turns (Dovecot, mail-server, Dovecot, ...) so that a noisy moment
# on this shared machine does not fall on one server only; each keeps its best round.
for round in $(seq "$RUNS"); do
  for server in dovecot mail-server; do
    echo "$server: $CLIENTS clients fetching whole messages for ${SECONDS_PER_RUN}s (round $round)" >&2
    rate=$($PY bench/imap_client.py fetch "$(port_of $server)" alice@example.test alice-pw "$CLIENTS" "$SECONDS_PER_RUN" "$MESSAGES" | awk '{print $1}')
    fetch_all[$server]="${fetch_all[$server]:-} $rate"
  done
done
for server in dovecot mail-server; do
  fetch_rate[$server]=$(echo ${fetch_all[$server]} | tr ' ' '\n' | sort -n | tail -1)
done

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "| measure ($MESSAGES messages) | Dovecot $(dovecot --version | cut -d' ' -f1) | mail-server | mail-server vs Dovecot |"
echo "|---|---|---|---|"
echo "| SELECT + FETCH all headers, best of $RUNS (s) | ${select_best[dovecot]} | ${select_best[mail-server]} | $(ratio "${select_best[dovecot]}" "${select_best[mail-server]}")× as fast |"
echo "| SELECT + FETCH all headers, median (s) | ${select_median[dovecot]} | ${select_median[mail-server]} | $(ratio "${select_median[dovecot]}" "${select_median[mail-server]}")× as fast |"
echo "| messages fetched/s, $CLIENTS clients, best of $RUNS rounds | ${fetch_rate[dovecot]} | ${fetch_rate[mail-server]} | $(ratio "${fetch_rate[mail-server]}" "${fetch_rate[dovecot]}")× |"
echo
echo "Every round (messages/s): Dovecot${fetch_all[dovecot]}; mail-server${fetch_all[mail-server]}."
