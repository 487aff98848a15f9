"""Webhook receivers in other languages against real deliveries (issue 18):
receiver.js verifies with the npm `standardwebhooks` library (the Standard
Webhooks reference implementation, not ours) and receiver.py with Python's
hmac. Both files are the README's receiver snippets, run as they are.

The real videogen-server (API keys on) polls the real videogen-sim; each
receiver gets generations that complete, fail and are cancelled, and must
handle every terminal event exactly once, verified.
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "webhooks_e2e"))
import webhooks_stack as ws  # noqa: E402

pb, _ = ws.stubs()
NODE = os.environ.get("NODE", "node")
PER_RECEIVER = 8  # generations per receiver; 2 of them cancelled
STACK = None


class Stack:
    def __init__(self):
        self.data_dir = tempfile.mkdtemp(prefix="videogen-wh-polyglot-")
        record = ws.create_key(self.data_dir, "polyglot")
        self.key, self.secret = record["key"], record["webhook_secret"]
        # error_rate: some generations FAIL; the seed keeps the mix stable.
        self.sim, sim_url = ws.start_sim("--queued_for=300ms",
                                         "--generating_for=1s",
                                         "--error_rate=0.4", "--seed=3")
        self.server = ws.Server(self.data_dir, [
            f"--upstream_url={sim_url}", "--poll_initial_delay=100ms",
            "--poll_interval=150ms", "--webhook_allow_insecure",
            "--webhook_retry_schedule=1s,1s,1s,1s,1s"])
        env = {"WEBHOOK_SECRET": self.secret, "PORT": "0",
               "HOST": "127.0.0.1"}
        self.receivers = {
            "python": ws.Process(["/usr/bin/python3",
                                  os.path.join(HERE, "receiver.py")],
                                 env=env, name="receiver-py"),
            "node": ws.Process([NODE, os.path.join(HERE, "receiver.js")],
                               env=env, name="receiver-js"),
        }
        self.urls = {name: p.wait_for(r"listening on (http://\S+:\d+)")[1]
                     for name, p in self.receivers.items()}
        self.client = ws.Client(self.server.address, self.key)

    def handled(self, name):
        """The events receiver `name` handled: its JSON output lines."""
        out = []
        for line in self.receivers[name].output().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def stop(self):
        self.client.close()
        for p in (*self.receivers.values(), self.server, self.sim):
            p.stop()
        ws.rmtree(self.data_dir)


def setUpModule():
    global STACK
    STACK = Stack()


def tearDownModule():
    if STACK is not None:
        STACK.stop()


def sign(secret, msg_id, timestamp, body):
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body,
                      hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def post(url, body, headers):
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


class ReceiverTest(unittest.TestCase):
    RECEIVER = None

    def run(self, result=None):
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            for name, p in STACK.receivers.items():
                sys.stderr.write(f"---- {name} receiver output ----\n"
                                 f"{p.output()[-3000:]}\n")
            sys.stderr.write("---- server log (tail) ----\n"
                             + ws.server_log_tail(STACK.server) + "\n")
        return out

    def test_every_terminal_event_arrives_verified_once(self):
        name = self.RECEIVER
        url = STACK.urls[name] + "/webhooks/videogen"
        created = [STACK.client.create(prompt=f"{name} clip {i}",
                                       webhook_url=url)
                   for i in range(PER_RECEIVER)]
        for g in created[:2]:
            STACK.client.cancel(g.id)
        expected = {}
        for g in created:
            x = STACK.client.wait(
                g.id, lambda x: x.done and x.webhook_status.settled,
                what="a settled webhook")
            st = x.webhook_status
            # A 2xx at the first attempt: the receiver verified it (it
            # answers 400 to anything that does not verify).
            self.assertEqual(st.last_http_status, 204, st)
            self.assertEqual(st.last_result, "delivered", st)
            self.assertEqual(st.attempts, 1, st)
            expected[f"{x.id}.{x.revision}"] = pb.Generation.State.Name(
                x.state)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            handled = [e for e in STACK.handled(name)
                       if e["webhook_id"] in expected]
            if len(handled) >= len(expected):
                break
            time.sleep(0.1)
        self.assertEqual(sorted(e["webhook_id"] for e in handled),
                         sorted(expected), "each terminal event once")
        for e in handled:
            self.assertEqual(e["state"], expected[e["webhook_id"]])
            self.assertEqual(e["webhook_id"].rsplit(".", 1)[0], e["id"])
            if e["state"] == "STATE_COMPLETED":
                self.assertTrue(e["video"].startswith("http"), e)
        states = set(expected.values())
        self.assertEqual(
            states, {"STATE_COMPLETED", "STATE_FAILED", "STATE_CANCELLED"},
            "the sim's seeded error rate should give all three")

    def test_forged_stale_and_replayed_deliveries(self):
        name = self.RECEIVER
        url = STACK.urls[name] + "/webhooks/videogen"
        body = json.dumps({"type": "TYPE_UPDATE", "generation": {
            "id": f"forged-{name}", "state": "STATE_COMPLETED",
            "revision": "3"}}).encode()
        msg_id = f"forged-{name}.3"
        now = str(int(time.time()))

        def headers(ts=now, secret=STACK.secret, signed_body=body):
            return {"webhook-id": msg_id, "webhook-timestamp": ts,
                    "webhook-signature": sign(secret, msg_id, ts,
                                              signed_body)}

        other = "whsec_" + base64.b64encode(b"not the tenant secret").decode()
        self.assertEqual(post(url, body, headers(secret=other)), 400)
        tampered = body.replace(b"COMPLETED", b"CANCELLED")
        self.assertEqual(post(url, tampered, headers()), 400)
        stale = str(int(time.time()) - 3600)
        self.assertEqual(post(url, body, headers(ts=stale)), 400)
        self.assertEqual(post(url, body, {}), 400)
        # Authentic: handled once, however often it is delivered.
        self.assertEqual(post(url, body, headers()), 204)
        self.assertEqual(post(url, body, headers()), 204)
        time.sleep(0.5)
        mine = [e for e in STACK.handled(name) if e["webhook_id"] == msg_id]
        self.assertEqual(len(mine), 1, mine)
        self.assertEqual(mine[0]["state"], "STATE_COMPLETED")


class NodeStandardWebhooksTest(ReceiverTest):
    RECEIVER = "node"


class PythonHmacTest(ReceiverTest):
    RECEIVER = "python"


del ReceiverTest  # abstract: only the two receivers run

if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0], "-v", *sys.argv[1:]])
