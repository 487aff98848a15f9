"""A videogen webhook receiver: verify the signature, answer 2xx fast, and
handle each event once (deliveries are at least once; de-duplicate on the
webhook-id header). Python standard library only.

    WEBHOOK_SECRET=whsec_... PORT=8080 python3 receiver.py
"""
import base64
import hashlib
import hmac
import json
import os
import queue
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# The tenant's webhook_secret, printed once by `videogen-server keys create`.
SECRET = os.environ["WEBHOOK_SECRET"]
KEY = base64.b64decode(SECRET.removeprefix("whsec_"))
TOLERANCE_S = 5 * 60  # refuse replays of old deliveries
MAX_BODY = 1 << 20


def verify(headers, body):
    """Standard Webhooks v1: webhook-signature holds "v1,<base64>" entries of
    HMAC-SHA256(KEY, f"{webhook-id}.{webhook-timestamp}." + body)."""
    msg_id = headers.get("webhook-id", "")
    timestamp = headers.get("webhook-timestamp", "")
    if not msg_id or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > TOLERANCE_S:
        return False
    signed = f"{msg_id}.{timestamp}.".encode() + body
    expected = base64.b64encode(
        hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    return any(version == "v1" and hmac.compare_digest(value, expected)
               for version, _, value in
               (s.partition(",") for s in
                headers.get("webhook-signature", "").split()))


def handle(webhook_id, event):
    """Your code: runs on a worker thread, after the 2xx went out."""
    g = event["generation"]
    print(json.dumps({"webhook_id": webhook_id, "id": g["id"],
                      "state": g["state"],
                      "video": g.get("video", {}).get("url", "")}),
          flush=True)


events = queue.Queue()
seen = set()  # in production: a unique key in your database, with a TTL
seen_lock = threading.Lock()


def worker():
    while True:
        handle(*events.get())


class Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: videogen reuses connections

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.close_connection = True  # the body stays unread
            return self.answer(413)
        body = self.rfile.read(length)
        if not verify(self.headers, body):
            return self.answer(400)
        webhook_id = self.headers["webhook-id"]
        with seen_lock:
            duplicate = webhook_id in seen
            seen.add(webhook_id)
        if not duplicate:
            events.put((webhook_id, json.loads(body)))
        self.answer(204)  # fast: videogen waits at most 15 s, then retries

    def answer(self, status):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    threading.Thread(target=worker, daemon=True).start()
    server = ThreadingHTTPServer(
        (os.environ.get("HOST", "127.0.0.1"), int(os.environ.get("PORT", 8080))),
        Receiver)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    server.serve_forever()
