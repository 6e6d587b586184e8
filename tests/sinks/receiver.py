#!/usr/bin/env python3
"""An HTTP(S) receiver for the sink tests (crates/gatehouse/tests/sinks.rs).

Python's http.server with HTTP/1.1 keep-alive. Every request is appended
to --log as one JSON line: method, path, lower-cased headers, body, and
the client's port (the same port across requests = a kept-alive
connection). What it answers depends on the path:

- ending in /_bulk: an Elasticsearch bulk answer, per document. A
  document whose "type" (or CloudTrail "eventName") is in --reject gets
  400 mapper_parsing_exception, for good; one in --throttle gets 429 the
  first time its _id is seen and 201 after. Stored documents are appended
  to --store as JSON lines ({"_id", "doc"}).
- starting with /redirect: 301 to /elsewhere.
- anything else: 200 {"text":"Success","code":0}.

With --cert and --key it speaks TLS; failed handshakes are logged as
{"tls_error": "..."}. With --proxy it is instead an HTTP CONNECT proxy
that logs each CONNECT and tunnels the bytes.

Prints "listening PORT" on stdout once it accepts connections.
"""

import argparse
import json
import select
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
SEEN = set()


def append(path, obj):
    if not path:
        return
    with LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode("utf-8", "replace")
        append(ARGS.log, {
            "method": "POST",
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body,
            "peer_port": self.client_address[1],
        })
        if self.path.endswith("/_bulk"):
            self.bulk(body)
        elif self.path.startswith("/redirect"):
            self.answer(301, {}, [("Location", "/elsewhere")])
        else:
            self.answer(200, {"text": "Success", "code": 0})

    def bulk(self, body):
        lines = [l for l in body.split("\n") if l.strip()]
        items, errors = [], False
        for action, doc in zip(lines[0::2], lines[1::2]):
            _id = json.loads(action)["index"]["_id"]
            parsed = json.loads(doc)
            kind = parsed.get("type") or parsed.get("eventName")
            if kind in ARGS.reject:
                errors = True
                items.append({"index": {"_id": _id, "status": 400, "error": {
                    "type": "mapper_parsing_exception",
                    "reason": f"failed to parse field [details] of type [{kind}]"}}})
                continue
            with LOCK:
                first = _id not in SEEN
                SEEN.add(_id)
            if kind in ARGS.throttle and first:
                errors = True
                items.append({"index": {"_id": _id, "status": 429, "error": {
                    "type": "es_rejected_execution_exception", "reason": "queue full"}}})
                continue
            append(ARGS.store, {"_id": _id, "doc": parsed})
            items.append({"index": {"_id": _id, "status": 201}})
        self.answer(200, {"took": 1, "errors": errors, "items": items})


class TlsServer(ThreadingHTTPServer):
    """Handshakes in the request's thread, logging the ones that fail."""

    def finish_request(self, request, client_address):
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError) as e:
            append(ARGS.log, {"tls_error": str(e)})
            return
        super().finish_request(request, client_address)


def pipe(a, b):
    socks = [a, b]
    while True:
        ready, _, _ = select.select(socks, [], [], 60)
        if not ready:
            return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)


class Proxy(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_CONNECT(self):
        append(ARGS.log, {"connect": self.path})
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host.strip("[]"), int(port)), timeout=10)
        except OSError as e:
            self.send_error(502, str(e))
            return
        self.send_response(200, "Connection established")
        self.end_headers()
        try:
            pipe(self.connection, upstream)
        finally:
            upstream.close()
        self.close_connection = True


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--store")
    p.add_argument("--reject", action="append", default=[])
    p.add_argument("--throttle", action="append", default=[])
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--proxy", action="store_true")
    ARGS = p.parse_args()
    family = socket.AF_INET6 if ":" in ARGS.host else socket.AF_INET
    if ARGS.proxy:
        cls, handler = ThreadingHTTPServer, Proxy
    elif ARGS.cert:
        cls, handler = TlsServer, Handler
    else:
        cls, handler = ThreadingHTTPServer, Handler
    cls.address_family = family
    cls.daemon_threads = True
    server = cls((ARGS.host, ARGS.port), handler)
    if ARGS.cert and not ARGS.proxy:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ARGS.cert, ARGS.key)
        server.socket = ctx.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"listening {ARGS.port}", flush=True)
    server.serve_forever()


ARGS = None
if __name__ == "__main__":
    sys.exit(main())
