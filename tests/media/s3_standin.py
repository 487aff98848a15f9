#!/usr/bin/python3
"""A strict S3 stand-in for tests.

Every request's AWS SigV4 Authorization header is recomputed with botocore's
signer (botocore.auth.S3SigV4Auth, Debian's python3-botocore), an
implementation independent of libcurl's, and a mismatch is answered 403
SignatureDoesNotMatch, so a lenient server cannot hide a signing bug. The
payload hash header must match the body. Objects live in memory; PUT, GET
(with Range), HEAD and DELETE on /BUCKET/KEY are supported.

Prints "PORT <n>" on stdout once listening. GET /_stats (unsigned) answers
JSON counters for the test.
"""

import argparse
import datetime
import hashlib
import hmac
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/"
    r"(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, ?"
    r"SignedHeaders=(?P<signed>[a-z0-9;-]+), ?Signature=(?P<sig>[0-9a-f]{64})$")
UNSIGNED = "UNSIGNED-PAYLOAD"


class State:
    def __init__(self, args):
        self.args = args
        self.lock = threading.Lock()
        self.objects = {}  # key -> (body, content_type, meta sha256)
        self.stats = {"requests": 0, "verified": 0, "rejected": 0,
                      "expect_100": 0,
                      "methods": {}, "signed_headers": {}, "reasons": []}


def verify(state, handler, method, body):
    """None if the request is signed correctly, else the reason."""
    args = state.args
    auth = handler.headers.get("Authorization", "")
    m = AUTH_RE.match(auth)
    if not m:
        return "no SigV4 Authorization header"
    if m["key"] != args.access_key:
        return "unknown access key"
    if m["region"] != args.region or m["service"] != "s3":
        return "wrong credential scope"
    amz_date = handler.headers.get("x-amz-date", "")
    if not amz_date.startswith(m["date"]):
        return "x-amz-date does not match the credential scope"
    try:
        when = datetime.datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return "bad x-amz-date"
    skew = abs((datetime.datetime.utcnow() - when).total_seconds())
    if skew > 900:
        return "request time too skewed"
    signed = m["signed"].split(";")
    required = {"host", "x-amz-date", "x-amz-content-sha256"}
    if args.token:
        required.add("x-amz-security-token")
        if handler.headers.get("x-amz-security-token") != args.token:
            return "bad session token"
    missing = required - set(signed)
    if missing:
        return "unsigned required headers: " + ",".join(sorted(missing))
    payload_hash = handler.headers.get("x-amz-content-sha256", "")
    if payload_hash != UNSIGNED and \
            payload_hash != hashlib.sha256(body).hexdigest():
        return "x-amz-content-sha256 does not match the body"
    if method == "PUT" and payload_hash == UNSIGNED:
        return "unsigned payload over plain http"
    headers = {}
    for name in signed:
        value = handler.headers.get(name)
        if value is None:
            return "signed header missing: " + name
        headers[name] = value
    request = AWSRequest(method=method,
                         url="http://" + headers["host"] + handler.path,
                         headers=headers, data=body)
    request.context["timestamp"] = amz_date
    signer = S3SigV4Auth(Credentials(args.access_key, args.secret_key,
                                     args.token or None), "s3", args.region)
    if signer.signed_headers(signer.headers_to_sign(request)) != m["signed"]:
        return "signed header list differs from botocore's"
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical),
                                request)
    if not hmac.compare_digest(expected, m["sig"]):
        return "signature mismatch"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state = None  # set in main

    def log_message(self, fmt, *args):  # quiet
        pass

    def do_GET(self):
        self.s3("GET")

    def do_PUT(self):
        self.s3("PUT")

    def do_HEAD(self):
        self.s3("HEAD")

    def do_DELETE(self):
        self.s3("DELETE")

    def reply(self, status, body=b"", headers=None, send_body=True):
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if "Content-Length" not in (headers or {}):
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

    def error(self, status, code, message):
        body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>%s"
                "</Code><Message>%s</Message></Error>" % (code, message))
        self.reply(status, body.encode(), {"Content-Type": "application/xml"},
                   send_body=self.command != "HEAD")

    def s3(self, method):
        st = self.state
        if method == "GET" and self.path == "/_stats":
            with st.lock:
                body = json.dumps(st.stats).encode()
            self.reply(200, body, {"Content-Type": "application/json"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reason = verify(st, self, method, body)
        with st.lock:
            st.stats["requests"] += 1
            st.stats["methods"][method] = st.stats["methods"].get(method, 0) + 1
            if self.headers.get("Expect", "").lower() == "100-continue":
                st.stats["expect_100"] += 1
            if reason:
                st.stats["rejected"] += 1
                st.stats["reasons"].append(reason)
            else:
                st.stats["verified"] += 1
                m = AUTH_RE.match(self.headers["Authorization"])
                st.stats["signed_headers"][method] = m["signed"]
        if reason:
            self.error(403, "SignatureDoesNotMatch", reason)
            return
        parts = self.path.lstrip("/").split("/", 1)
        if len(parts) != 2 or parts[0] != st.args.bucket or not parts[1]:
            self.error(404, "NoSuchBucket", "no such bucket")
            return
        key = parts[1]
        if method == "PUT":
            with st.lock:
                st.objects[key] = (
                    body, self.headers.get("Content-Type",
                                           "binary/octet-stream"),
                    self.headers.get("x-amz-meta-sha256", ""))
            self.reply(200, b"", {"ETag": '"%s"' % hashlib.md5(body).hexdigest()})
            return
        with st.lock:
            obj = st.objects.get(key)
            if method == "DELETE":
                st.objects.pop(key, None)
        if method == "DELETE":
            self.reply(204)
            return
        if obj is None:
            self.error(404, "NoSuchKey", "no such key")
            return
        data, ctype, sha = obj
        headers = {"Content-Type": ctype, "Accept-Ranges": "bytes"}
        if sha:
            headers["x-amz-meta-sha256"] = sha
        status = 200
        rng = self.headers.get("Range")
        if rng and method == "GET":
            m = re.match(r"^bytes=(\d+)-(\d*)$", rng)
            if not m:
                self.error(400, "InvalidArgument", "bad range")
                return
            start = int(m[1])
            end = int(m[2]) if m[2] else len(data) - 1
            if start >= len(data):
                self.error(416, "InvalidRange", "range not satisfiable")
                return
            end = min(end, len(data) - 1)
            headers["Content-Range"] = "bytes %d-%d/%d" % (start, end,
                                                           len(data))
            data = data[start:end + 1]
            status = 206
        headers["Content-Length"] = str(len(data))
        self.reply(status, data, headers, send_body=method == "GET")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--access-key", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--token", default="")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--bucket", required=True)
    args = p.parse_args()
    Handler.state = State(args)
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("PORT %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
