"""The app the app-server benchmark deploys: standard library only, HTTP/1.1 keep-alive,
TCP_NODELAY, a thread per connection."""
import os
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = ("hello from " + open("VERSION").read().strip() + "\n").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024

    def get_request(self):
        conn, addr = super().get_request()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr


Server(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
