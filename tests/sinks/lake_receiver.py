#!/usr/bin/env python3
"""A CloudTrail Lake `PutAuditEvents` endpoint for the sink tests
(crates/gatehouse/tests/sinks.rs), over HTTPS.

Each request's SigV4 signature is checked independently with botocore
(SigV4Auth, service cloudtrail-data): the request as received, with the
headers its Authorization names as signed, is signed again with the
expected credentials and compared. The body is checked against the API
(1 to 100 audit events, id, eventData, eventDataChecksum = base64 of the
SHA-256 of eventData) and eventData against the CloudTrail Lake
integration schema (required fields, known fields only, types, lengths,
eventTime, recipientAccountId = the channel's account).

A bad signature gets 403; a malformed request 400. Each logged request
is one JSON line in --log: {"path", "sig_ok", "sig_error", "ids",
"schema_errors", "body"}. Events it accepts go to --store as
{"id", "eventData"}. An event whose eventName is in --fail answers
`failed` every time; one in --flaky the first time only.

Run with the Python of target/sinks-venv (scripts/deps.sh).
"""

import argparse
import base64
import datetime
import hashlib
import json
import re
import ssl
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

LOCK = threading.Lock()
SEEN = set()

REQUIRED = {"version", "userIdentity", "eventSource", "eventName", "eventTime", "UID",
            "recipientAccountId"}
KNOWN = REQUIRED | {"userAgent", "requestParameters", "responseElements", "errorCode",
                    "errorMessage", "sourceIPAddress", "additionalEventData"}
MAX_LEN = {"version": 256, "userAgent": 1024, "eventSource": 1024, "eventName": 1024,
           "UID": 1024, "errorCode": 1024, "errorMessage": 1024}
TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def append(path, obj):
    with LOCK, open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(obj) + "\n")


def check_signature(method, host, path, headers, body):
    """None when the signature is right, else why not."""
    auth = headers.get("authorization", "")
    m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
                 r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$", auth)
    if not m:
        return f"no SigV4 Authorization header: {auth!r}"
    akid, date, region, service, signed, signature = m.groups()
    if akid != ARGS.access_key:
        return f"unknown access key {akid}"
    if (region, service) != (ARGS.region, "cloudtrail-data"):
        return f"scope {region}/{service}, expected {ARGS.region}/cloudtrail-data"
    names = signed.split(";")
    for must in ["host", "x-amz-date"] + (["x-amz-security-token"] if ARGS.session_token else []):
        if must not in names:
            return f"{must} is not signed"
    amz_date = headers.get("x-amz-date", "")
    if not amz_date.startswith(date):
        return "x-amz-date and the credential scope disagree"
    when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)
    if abs((datetime.datetime.now(datetime.timezone.utc) - when).total_seconds()) > 300:
        return "x-amz-date is more than 5 minutes off"
    request = AWSRequest(method=method, url=f"https://{host}{path}", data=body,
                         headers={n: headers[n] for n in names if n in headers})
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(ARGS.access_key, ARGS.secret_key, ARGS.session_token or None),
                       "cloudtrail-data", ARGS.region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != signature:
        return f"signature mismatch; botocore's canonical request:\n{canonical}"
    return None


def schema_errors(data):
    errors = []
    if not isinstance(data, dict):
        return ["eventData is not a JSON object"]
    missing = REQUIRED - data.keys()
    if missing:
        errors.append(f"missing {sorted(missing)}")
    unknown = data.keys() - KNOWN
    if unknown:
        errors.append(f"unknown fields {sorted(unknown)}")
    for k, n in MAX_LEN.items():
        if k in data and (not isinstance(data[k], str) or len(data[k]) > n):
            errors.append(f"{k} is not a string of at most {n} characters")
    ui = data.get("userIdentity")
    if not isinstance(ui, dict) or not isinstance(ui.get("type"), str) \
            or not isinstance(ui.get("principalId"), str) or len(ui["type"]) > 128 \
            or len(ui["principalId"]) > 1024 or (ui.keys() - {"type", "principalId", "details"}):
        errors.append(f"bad userIdentity {ui!r}")
    if not TIME.match(str(data.get("eventTime", ""))):
        errors.append(f"bad eventTime {data.get('eventTime')!r}")
    if data.get("recipientAccountId") != ARGS.account:
        errors.append(f"recipientAccountId {data.get('recipientAccountId')!r}")
    for k in ("requestParameters", "responseElements", "additionalEventData"):
        if k in data and not isinstance(data[k], dict):
            errors.append(f"{k} is not an object")
    return errors


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        entry = {"path": self.path, "body": body.decode("utf-8", "replace")}
        sig_error = check_signature("POST", headers.get("host", ""), self.path, headers, body)
        entry["sig_ok"], entry["sig_error"] = sig_error is None, sig_error
        if sig_error:
            append(ARGS.log, entry)
            self.answer(403, {"__type": "InvalidSignatureException", "message": sig_error})
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        errors = []
        if url.path != "/PutAuditEvents" or query.get("channelArn") != [ARGS.channel]:
            errors.append(f"bad path or channelArn: {self.path}")
        try:
            events = json.loads(body)["auditEvents"]
        except (ValueError, KeyError, TypeError) as e:
            events, errors = [], errors + [f"bad body: {e}"]
        if not 1 <= len(events) <= 100:
            errors.append(f"{len(events)} audit events")
        successful, failed, ids = [], [], []
        for ev in events:
            event_id, data = ev.get("id"), ev.get("eventData")
            ids.append(event_id)
            if ev.keys() - {"id", "eventData", "eventDataChecksum"} or not isinstance(data, str) \
                    or not re.match(r"^[-_A-Za-z0-9]{1,128}$", str(event_id)):
                errors.append(f"bad audit event {ev!r}")
                continue
            digest = base64.b64encode(hashlib.sha256(data.encode()).digest()).decode()
            if ev.get("eventDataChecksum", digest) != digest:
                errors.append(f"{event_id}: eventDataChecksum does not match")
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = None
            problems = schema_errors(parsed)
            errors += [f"{event_id}: {p}" for p in problems]
            name = parsed.get("eventName") if isinstance(parsed, dict) else None
            with LOCK:
                first = event_id not in SEEN
                SEEN.add(event_id)
            if problems or name in ARGS.fail or (name in ARGS.flaky and first):
                failed.append({"id": event_id, "errorCode": "InvalidEventData" if problems or name in ARGS.fail else "ThrottlingException",
                               "errorMessage": "; ".join(problems) or f"refused {name} for the test"})
                continue
            append(ARGS.store, {"id": event_id, "eventData": parsed})
            successful.append({"id": event_id, "eventID": str(uuid.uuid4())})
        entry["ids"], entry["schema_errors"] = ids, errors
        append(ARGS.log, entry)
        if errors and not events:
            self.answer(400, {"__type": "ValidationException", "message": "; ".join(errors)})
            return
        self.answer(200, {"successful": successful, "failed": failed})


class TlsServer(ThreadingHTTPServer):
    daemon_threads = True

    def finish_request(self, request, client_address):
        try:
            request.do_handshake()
        except (ssl.SSLError, OSError):
            return
        super().finish_request(request, client_address)


def main():
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--store", required=True)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--session-token", default="")
    p.add_argument("--region", required=True)
    p.add_argument("--channel", required=True)
    p.add_argument("--fail", action="append", default=[])
    p.add_argument("--flaky", action="append", default=[])
    ARGS = p.parse_args()
    ARGS.account = ARGS.channel.split(":")[4]
    server = TlsServer(("127.0.0.1", ARGS.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(ARGS.cert, ARGS.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print(f"listening {ARGS.port}", flush=True)
    server.serve_forever()


ARGS = None
if __name__ == "__main__":
    sys.exit(main())
