#!/usr/bin/env python3
"""IMAP load for bench/imap.sh: a plain-socket client that reads responses (literals
included) without parsing them, so that the client costs the same against every server.

    imap_client.py headers PORT USER PASSWORD RUNS
        SELECT INBOX, then UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER]); prints the seconds
        of each run (SELECT to the FETCH's tagged OK) and the messages fetched.
    imap_client.py fetch PORT USER PASSWORD CLIENTS SECONDS MESSAGES
        CLIENTS processes each EXAMINE INBOX and FETCH n BODY.PEEK[] of random messages (1 to
        MESSAGES) for SECONDS; prints messages fetched per second, all clients together.
"""
import multiprocessing
import random
import re
import socket
import sys
import time

LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Client:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=256 * 1024)
        self.file.readline()  # greeting
        self.n = 0

    def command(self, text):
        """Sends a command; returns (tagged status line, count of untagged responses)."""
        self.n += 1
        tag = b"Q%d" % self.n
        self.sock.sendall(tag + b" " + text.encode() + b"\r\n")
        untagged = 0
        while True:
            line = self.file.readline()
            if not line:
                raise RuntimeError("connection closed")
            if line.startswith(b"* "):
                untagged += 1
            # A line may end in a literal: skip its bytes and read on.
            while True:
                match = LITERAL.search(line)
                if not match:
                    break
                self.file.read(int(match.group(1)))
                line = self.file.readline()
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line.decode(errors="replace"))
                return line, untagged

    def login(self, user, password):
        self.command('LOGIN "%s" "%s"' % (user, password))


def headers(port, user, password, runs):
    for _ in range(runs):
        client = Client(port)
        client.login(user, password)
        start = time.perf_counter()
        client.command("SELECT INBOX")
        _, count = client.command("UID FETCH 1:* (UID FLAGS BODY.PEEK[HEADER])")
        elapsed = time.perf_counter() - start
        client.command("LOGOUT")
        print("%.3f %d" % (elapsed, count), flush=True)


def fetch_worker(args):
    port, user, password, seconds, total, seed = args
    client = Client(port)
    client.login(user, password)
    client.command("EXAMINE INBOX")
    rng = random.Random(seed)
    fetched = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        client.command("FETCH %d BODY.PEEK[]" % rng.randint(1, total))
        fetched += 1
    client.command("LOGOUT")
    return fetched


def fetch(port, user, password, clients, seconds, total):
    with multiprocessing.Pool(clients) as pool:
        counts = pool.map(
            fetch_worker, [(port, user, password, seconds, total, i) for i in range(clients)]
        )
    print("%.1f %d" % (sum(counts) / seconds, sum(counts)), flush=True)


if __name__ == "__main__":
    mode, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    if mode == "headers":
        headers(port, user, password, int(sys.argv[5]))
    else:
        fetch(port, user, password, int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7]))
