"""Webhooks end to end (issue 18, design.md §8): the real videogen-server and
videogen-sim binaries, API keys on, deliveries to receivers on loopback.

Run one class:  python3 test_webhooks_e2e.py RetryTest
(ctest registers each class as its own test; see CMakeLists.txt.)
"""
import os
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webhooks_stack as ws  # noqa: E402

import grpc  # noqa: E402

pb, _ = ws.stubs()
TERMINAL = (pb.Generation.STATE_COMPLETED, pb.Generation.STATE_FAILED,
            pb.Generation.STATE_CANCELLED)


class StackTest(unittest.TestCase):
    """One sim, one server (tenant "acme") and a fresh data dir per test."""

    SIM_FLAGS = ("--queued_for=200ms", "--generating_for=600ms")
    SERVER_FLAGS = ("--webhook_allow_insecure",
                    "--webhook_retry_schedule=1s,1s,1s,1s,1s")

    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="videogen-wh-e2e-")
        self.addCleanup(ws.rmtree, self.data_dir)
        record = ws.create_key(self.data_dir, "acme")
        self.key, self.secret = record["key"], record["webhook_secret"]
        self.sim, sim_url = ws.start_sim(*self.SIM_FLAGS)
        self.addCleanup(self.sim.stop)
        self.server = ws.Server(self.data_dir, [
            f"--upstream_url={sim_url}", "--poll_initial_delay=100ms",
            "--poll_interval=150ms", *self.SERVER_FLAGS])
        self.addCleanup(self.server.stop)
        self.client = ws.Client(self.server.address, self.key)
        self.addCleanup(lambda: self.client.close())

    def run(self, result=None):
        # On failure, the server's log is what explains it.
        before = len(result.failures) + len(result.errors) if result else 0
        out = super().run(result)
        if result and len(result.failures) + len(result.errors) > before:
            server = getattr(self, "server", None)
            sys.stderr.write("---- server log (tail) ----\n"
                             + ws.server_log_tail(server) + "\n")
        return out

    def receiver(self, answer=None, port=0):
        r = ws.Receiver(self.secret, answer, port)
        self.addCleanup(r.stop)
        return r

    def create(self, url, **extra):
        return self.client.create(prompt="a heron over the reeds",
                                  webhook_url=url, **extra)

    def assert_authentic(self, deliveries):
        for d in deliveries:
            self.assertIsNone(d.verify_error, d.webhook_id)
            self.assertEqual(d.headers.get("content-type"), "application/json")


class RetryTest(StackTest):
    """A receiver that fails the first two attempts gets the third, with the
    same webhook-id each time; webhook_status follows every attempt."""

    def test_third_attempt_delivers_with_the_same_webhook_id(self):
        second_arrived = threading.Event()
        release_second = threading.Event()

        def answer(d, n):
            if n == 2:
                # Held until the test has read webhook_status after attempt 1.
                second_arrived.set()
                release_second.wait(30)
            return 503 if n <= 2 else 200

        r = self.receiver(answer)
        g = self.create(r.url)
        self.assertTrue(second_arrived.wait(60), "no second attempt")
        mid = self.client.get(g.id).webhook_status
        release_second.set()
        self.assertEqual(mid.attempts, 1, mid)
        self.assertEqual(mid.last_http_status, 503, mid)
        self.assertIn("http 503", mid.last_result)
        self.assertIn("retrying", mid.last_result)
        self.assertFalse(mid.settled, mid)
        self.assertTrue(mid.HasField("last_attempt_time"), mid)

        got = r.wait(lambda ds: len(ds) >= 3, what="three attempts")
        final = self.client.wait(g.id, lambda x: x.webhook_status.settled,
                                 what="settled webhook_status")
        self.assertEqual(final.state, pb.Generation.STATE_COMPLETED)
        self.assertEqual([d.status for d in got], [503, 503, 200])
        expected_id = f"{g.id}.{final.revision}"
        self.assertEqual({d.webhook_id for d in got}, {expected_id})
        self.assertEqual(len({d.body for d in got}), 1, "body changed")
        self.assert_authentic(got)
        self.assertEqual(got[0].generation["state"], "STATE_COMPLETED")
        # Retries follow the 1 s schedule (+-20% jitter), not a hot loop.
        for a, b in zip(got, got[1:]):
            self.assertGreaterEqual(b.received - a.received, 0.7)
        st = final.webhook_status
        self.assertEqual(st.attempts, 3, st)
        self.assertEqual(st.last_http_status, 200, st)
        self.assertEqual(st.last_result, "delivered")
        self.assertTrue(st.settled)
        time.sleep(2.5)  # and nothing more once delivered
        self.assertEqual(len(r.snapshot()), 3)

    def test_redirect_is_not_followed_and_counts_as_a_failure(self):
        def answer(d, n):
            if d.path == "/moved":
                return 200  # following the redirect would "deliver" here
            return (302, {"Location": "/moved"}) if n == 1 else 204

        r = self.receiver(answer)
        g = self.create(r.url)
        got = r.wait(lambda ds: len(ds) >= 2, what="a retry")
        final = self.client.wait(g.id, lambda x: x.webhook_status.settled,
                                 what="settled webhook_status")
        self.assertEqual([(d.path, d.status) for d in got],
                         [("/hook", 302), ("/hook", 204)])
        self.assertEqual(got[0].webhook_id, got[1].webhook_id)
        st = final.webhook_status
        self.assertEqual((st.attempts, st.last_http_status), (2, 204), st)
        time.sleep(1.5)
        self.assertEqual(len(r.snapshot()), 2, "the Location was fetched")

    def test_status_reports_the_redirect(self):
        r = self.receiver(lambda d, n: (301, {"Location": "/elsewhere"}))
        g = self.create(r.url)
        self.client.wait(g.id, lambda x: x.webhook_status.attempts >= 1,
                         what="an attempt")
        st = self.client.get(g.id).webhook_status
        self.assertEqual(st.last_http_status, 301, st)
        self.assertIn("redirect not followed", st.last_result)
        self.assertFalse(st.settled, st)
        self.assertTrue(all(d.path == "/hook" for d in r.snapshot()))


class GoneTest(StackTest):
    """410 stops the generation's deliveries."""

    def test_410_is_not_retried(self):
        r = self.receiver(lambda d, n: 410)
        g = self.create(r.url)
        final = self.client.wait(
            g.id, lambda x: x.done and x.webhook_status.settled,
            what="settled webhook_status")
        time.sleep(3.5)  # three retry periods of the 1 s schedule
        got = r.snapshot()
        self.assertEqual(len(got), 1, [d.webhook_id for d in got])
        self.assert_authentic(got)
        st = self.client.get(g.id).webhook_status
        self.assertEqual(st.attempts, 1, st)
        self.assertEqual(st.last_http_status, 410, st)
        self.assertIn("gone (410)", st.last_result)
        self.assertTrue(st.settled)
        self.assertEqual(got[0].webhook_id, f"{g.id}.{final.revision}")

    def test_410_stops_later_events_of_the_generation(self):
        # Every GENERATING and COMPLETED event is wanted; the receiver says
        # 410 to the first. design.md §8: "410 stops all deliveries of that
        # generation", so the later events must not be sent either.
        r = self.receiver(lambda d, n: 410)
        g = self.create(r.url, webhook_states=[
            pb.Generation.STATE_GENERATING, pb.Generation.STATE_COMPLETED])
        first = r.wait(lambda ds: len(ds) >= 1, what="first delivery")[0]
        self.assertEqual(first.generation["state"], "STATE_GENERATING")
        final = self.client.wait(g.id, lambda x: x.done, what="done")
        self.assertEqual(final.state, pb.Generation.STATE_COMPLETED)
        time.sleep(3.5)
        got = r.snapshot()
        self.assertEqual(
            [(d.webhook_id, d.generation.get("state")) for d in got],
            [(first.webhook_id, "STATE_GENERATING")],
            "events after a 410 were still delivered")
        st = self.client.get(g.id).webhook_status
        self.assertEqual(st.last_http_status, 410, st)
        self.assertTrue(st.settled, st)


class StatesTest(StackTest):
    """webhook_states picks the events; the default is the terminal ones."""

    def test_default_is_terminal_only_and_states_select(self):
        r = self.receiver()
        default = self.create(r.url)
        chosen = self.create(r.url, webhook_states=[
            pb.Generation.STATE_GENERATING, pb.Generation.STATE_COMPLETED])
        for g in (default, chosen):
            self.client.wait(g.id, lambda x: x.done and
                             x.webhook_status.settled, what="settled")
        got = r.snapshot()
        self.assert_authentic(got)
        by_gen = {}
        for d in got:
            by_gen.setdefault(d.generation["id"], []).append(
                d.generation["state"])
        self.assertEqual(by_gen[default.id], ["STATE_COMPLETED"])
        self.assertIn("STATE_GENERATING", by_gen[chosen.id])
        self.assertEqual(by_gen[chosen.id][-1], "STATE_COMPLETED")
        self.assertNotIn("STATE_QUEUED", by_gen[chosen.id])


class DurableTest(StackTest):
    """A receiver that is down across a kill -9 and restart of the server
    still gets every terminal event, with the same webhook-id."""

    SIM_FLAGS = ("--queued_for=300ms", "--generating_for=1s",
                 "--error_rate=0.3", "--seed=7")
    # Long enough that nobody gives up while the receiver is down.
    SERVER_FLAGS = ("--webhook_allow_insecure",
                    "--webhook_retry_schedule=" + ",".join(["1s"] * 40))

    def test_kill_9_and_restart_lose_no_delivery(self):
        # Two receivers: one answers 503 until after the restart (so its
        # logs show the webhook-ids tried before the kill), the other is not
        # listening at all until then (connection refused).
        up = threading.Event()
        flaky = self.receiver(lambda d, n: 200 if up.is_set() else 503)
        down_port = ws.free_port()
        down_url = f"http://127.0.0.1:{down_port}/hook"
        early = [self.create(flaky.url) for _ in range(3)]
        early += [self.create(down_url) for _ in range(2)]
        cancelled = [self.create(flaky.url), self.create(down_url)]
        for g in cancelled:
            self.client.cancel(g.id)
        # Terminal before the kill, each with a failed attempt on record.
        before = {}
        for g in early + cancelled:
            before[g.id] = self.client.wait(
                g.id, lambda x: x.done and x.webhook_status.attempts >= 1,
                what="a failed attempt")
            st = before[g.id].webhook_status
            self.assertFalse(st.settled, st)
            if g.request.webhook_url == down_url:
                self.assertEqual(st.last_http_status, 0, st)
                self.assertIn("cannot connect", st.last_result)
            else:
                self.assertEqual(st.last_http_status, 503, st)
        tried = {d.webhook_id for d in flaky.snapshot()}
        for g in early + cancelled:
            if g.request.webhook_url == flaky.url:
                self.assertIn(f"{g.id}.{before[g.id].revision}", tried)
        # Still running upstream at the kill: terminal only after restart.
        late = [self.create(url) for url in (flaky.url, down_url, flaky.url)]

        self.server.kill9()
        self.client.close()
        time.sleep(1.5)  # the sim finishes the late ones meanwhile
        self.server.start()
        self.client = ws.Client(self.server.address, self.key)
        for gid, x in before.items():
            after = self.client.get(gid)
            self.assertEqual(after.revision, x.revision)
            # webhook_status survived the kill.
            self.assertGreaterEqual(after.webhook_status.attempts,
                                    x.webhook_status.attempts)
        up.set()
        back = self.receiver(port=down_port)

        expected = {}
        for g in early + cancelled + late:
            # 60 s lease: a delivery claimed at the kill waits it out.
            x = self.client.wait(
                g.id, lambda x: x.done and x.webhook_status.settled,
                timeout=150, what="settled webhook_status")
            self.assertEqual(x.webhook_status.last_result, "delivered")
            self.assertIn(x.state, TERMINAL)
            expected[f"{g.id}.{x.revision}"] = (
                g.request.webhook_url, pb.Generation.State.Name(x.state))
        delivered = []
        for receiver in (flaky, back):
            got = receiver.snapshot()
            self.assert_authentic(got)
            for d in got:
                if d.status // 100 == 2:
                    delivered.append(d)
                    url, state = expected[d.webhook_id]
                    self.assertEqual(url, receiver.url)
                    self.assertEqual(d.generation["state"], state)
        self.assertEqual(sorted(d.webhook_id for d in delivered),
                         sorted(expected), "each terminal event once")
        # The same webhook-ids before the kill and after the restart.
        for gid, x in before.items():
            self.assertIn(f"{gid}.{x.revision}", expected)
        states = {state for _, state in expected.values()}
        self.assertIn("STATE_CANCELLED", states)
        self.assertIn("STATE_COMPLETED", states)


class DurableInFlightSlowTest(StackTest):
    """kill -9 while an attempt is in flight: the receiver may have it, so
    the delivery is sent again (at least once, same webhook-id) once the
    dead process's lease on it expires (about a minute)."""

    def test_attempt_cut_by_kill_9_is_sent_again(self):
        holding = threading.Event()
        release = threading.Event()

        def answer(d, n):
            if n == 1:
                holding.set()  # in flight: the server dies now
                release.wait(60)
                return 503  # to nobody
            return 204

        r = self.receiver(answer)
        g = self.create(r.url)
        self.assertTrue(holding.wait(60), "no first attempt")
        self.server.kill9()
        killed = time.time()
        release.set()
        self.client.close()
        self.server.start()
        self.client = ws.Client(self.server.address, self.key)
        x = self.client.wait(g.id, lambda x: x.webhook_status.settled,
                             timeout=180, what="settled webhook_status")
        got = r.snapshot()
        self.assertEqual([d.webhook_id for d in got],
                         [f"{g.id}.{x.revision}"] * 2)
        self.assertEqual(got[0].body, got[1].body)
        self.assert_authentic(got)
        self.assertEqual(x.webhook_status.last_result, "delivered")
        sys.stderr.write(f"sent again {got[1].received - killed:.1f} s after "
                         "the kill\n")


class InsecureRefusedTest(unittest.TestCase):
    """Without --webhook_allow_insecure, a URL that resolves to 127.0.0.1 is
    INVALID_ARGUMENT at create, with a message that says why."""

    def setUp(self):
        self.data_dir = tempfile.mkdtemp(prefix="videogen-wh-e2e-")
        self.addCleanup(ws.rmtree, self.data_dir)
        self.key = ws.create_key(self.data_dir, "acme")["key"]
        self.sim, sim_url = ws.start_sim()
        self.addCleanup(self.sim.stop)
        self.server = ws.Server(self.data_dir, [f"--upstream_url={sim_url}"])
        self.addCleanup(self.server.stop)
        self.client = ws.Client(self.server.address, self.key)
        self.addCleanup(lambda: self.client.close())

    def refused(self, url):
        with self.assertRaises(grpc.RpcError) as cm:
            self.client.create(prompt="a heron", webhook_url=url)
        self.assertEqual(cm.exception.code(),
                         grpc.StatusCode.INVALID_ARGUMENT,
                         cm.exception.details())
        return cm.exception.details()

    def test_loopback_is_refused(self):
        # "localhost" resolves to 127.0.0.1 (and ::1): refused after DNS.
        msg = self.refused("https://localhost:8443/hook")
        self.assertIn("webhook_url", msg)
        self.assertIn("loopback", msg)
        msg = self.refused("https://127.0.0.1/hook")
        self.assertIn("loopback", msg)
        self.assertIn("127.0.0.1", msg)
        self.assertIn("loopback", self.refused("https://[::1]:8443/hook"))
        self.assertIn("private", self.refused("https://10.0.0.5/hook"))
        msg = self.refused("http://example.com/hook")
        self.assertIn("https", msg)
        # Nothing was created by the refused calls.
        page = self.client.stub.ListGenerations(
            pb.ListGenerationsRequest(), timeout=30,
            metadata=self.client.metadata)
        self.assertEqual(len(page.generations), 0)
        g = self.client.create(prompt="a heron")  # still serving
        self.assertTrue(g.id)


if __name__ == "__main__":
    # python3 test_webhooks_e2e.py [Class ...]
    unittest.main(argv=[sys.argv[0], "-v", *sys.argv[1:]])
