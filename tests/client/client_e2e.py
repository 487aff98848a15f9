#!/usr/bin/python3
"""End-to-end tests of the `videogen` client against real binaries.

Usage: client_e2e.py VIDEOGEN VIDEOGEN_SERVER VIDEOGEN_SIM [unittest names...]

Every test runs the real client against a real videogen-server on loopback
(with its in-process simulator, or with the standalone videogen-sim when the
upstream must outlive a server restart). Standard library only.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import uuid

VIDEOGEN = SERVER = SIM = None

UUID4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FAST_SIM = ["--sim_queued_for=300ms", "--sim_generating_for=700ms"]
FAST_POLL = ["--poll_initial_delay=50ms", "--poll_interval=100ms",
             "--heartbeat_interval=1s", "--drain_grace=2s"]


def free_port():
    """A port that was free a moment ago (bind 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_client(server_addr, *args, timeout=60, env=None):
    return subprocess.run([VIDEOGEN, "--server", server_addr, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=env)


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events_of(proc):
    """The GenerationEvent objects of a finished client process."""
    return [e for e in json_lines(proc.stdout) if "generation" in e]


class Server:
    """One videogen-server process on a fixed loopback port."""

    def __init__(self, args, port=None, env=None, log_dir=None):
        self.args = list(args)
        self.port = port or free_port()
        self.env = env
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="vg-client-log-")
        self.proc = None
        self.starts = 0

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def start(self):
        self.starts += 1
        log = open(os.path.join(self.log_dir, f"server-{self.starts}.log"), "w")
        self.proc = subprocess.Popen(
            [SERVER, f"--listen={self.addr}", "--log_format=text", *self.args],
            stdout=log, stderr=subprocess.STDOUT, env=self.env)
        log.close()
        self.wait_ready()
        return self

    def wait_ready(self, timeout=30):
        """Ready once GetGeneration answers NOT_FOUND for a made-up id."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"server exited with {self.proc.returncode}:\n{self.log()}")
            p = run_client(self.addr, "--timeout", "1s", "get", "no-such-id")
            if p.returncode == 3 and "NOT_FOUND" in p.stderr:
                return
            time.sleep(0.1)
        raise AssertionError(f"server not ready after {timeout}s:\n{self.log()}")

    def stop(self, sig=signal.SIGTERM):
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log(self):
        out = []
        for name in sorted(os.listdir(self.log_dir)):
            with open(os.path.join(self.log_dir, name)) as f:
                out.append(f"--- {name}\n" + f.read()[-4000:])
        return "\n".join(out)


class Sim:
    """The standalone videogen-sim (an upstream that survives restarts)."""

    def __init__(self, *args):
        self.proc = subprocess.Popen(
            [SIM, "--listen=127.0.0.1:0", *args], stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on (http://\S+)", line)
        if not m:
            self.proc.kill()
            raise AssertionError(f"videogen-sim did not start: {line!r}")
        self.url = m.group(1)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.proc.stdout.close()


class ClientTestCase(unittest.TestCase):
    server_args = ["--simulate", "--store=memory", *FAST_SIM, *FAST_POLL]

    @classmethod
    def setUpClass(cls):
        cls.server = Server(cls.server_args).start()
        cls.tmp = tempfile.mkdtemp(prefix="vg-client-")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def vg(self, *args, timeout=60):
        return run_client(self.server.addr, *args, timeout=timeout)

    def assertExit(self, proc, code):
        self.assertEqual(
            proc.returncode, code,
            f"exit {proc.returncode}, want {code}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}\nserver log:\n{self.server.log()}")

    def assertRisingEvents(self, events, final_state):
        self.assertTrue(events, "no events")
        revisions = [int(e["generation"]["revision"]) for e in events]
        self.assertEqual(revisions, sorted(set(revisions)),
                         f"revisions not strictly rising: {revisions}")
        ids = {e["generation"]["id"] for e in events}
        self.assertEqual(len(ids), 1, ids)
        last = events[-1]["generation"]
        self.assertEqual(last["state"], final_state)
        self.assertTrue(last.get("done"))
        return last

    def detach(self, *args):
        p = self.vg("generate", *args, "--detach")
        self.assertExit(p, 0)
        gen_id = p.stdout.strip()
        self.assertRegex(gen_id, r"^[A-Za-z0-9_-]+$")
        return gen_id


class SubcommandTest(ClientTestCase):
    """Each subcommand against a fast simulated server; JSON output."""

    def test_generate_streams_json_events_to_completion(self):
        p = self.vg("generate", "a red fox in the snow", "--duration", "5",
                    "--aspect-ratio", "16:9", "--cfg-scale", "0.5",
                    "--negative-prompt", "blur", "--label", "team=e2e")
        self.assertExit(p, 0)
        events = events_of(p)
        self.assertEqual(events[0]["type"], "TYPE_SNAPSHOT")
        last = self.assertRisingEvents(events, "STATE_COMPLETED")
        self.assertTrue(last["video"]["url"].startswith("http://127.0.0.1:"))
        self.assertEqual(last["labels"], {"team": "e2e"})
        self.assertEqual(last["request"]["negativePrompt"], "blur")
        self.assertAlmostEqual(last["request"]["cfgScale"], 0.5)
        states = [e["generation"]["state"] for e in events]
        self.assertIn("STATE_GENERATING", states)
        m = re.search(r"^request_id: (\S+)$", p.stderr, re.M)
        self.assertIsNotNone(m, p.stderr)
        self.assertRegex(m.group(1), UUID4)

    def test_json_flag_prints_same_shape(self):
        p = self.vg("--json", "generate", "a boat", "--no-reconnect")
        self.assertExit(p, 0)
        self.assertRisingEvents(events_of(p), "STATE_COMPLETED")

    def test_request_id_is_idempotent(self):
        rid = str(uuid.uuid4())
        a = self.vg("--json", "generate", "same", "--request-id", rid,
                    "--detach")
        b = self.vg("--json", "generate", "same", "--request-id", rid,
                    "--detach")
        self.assertExit(a, 0)
        self.assertExit(b, 0)
        first, second = json.loads(a.stdout), json.loads(b.stdout)
        self.assertEqual(first["id"], second["id"])
        self.assertEqual(first["request"]["requestId"], rid)
        self.assertNotIn("request_id:", a.stderr)  # only printed when made up
        stream = self.vg("generate", "same", "--request-id", rid)
        self.assertExit(stream, 0)
        last = self.assertRisingEvents(events_of(stream), "STATE_COMPLETED")
        self.assertEqual(last["id"], first["id"])

    def test_detach_then_watch_and_get(self):
        gen_id = self.detach("a kite")
        w = self.vg("watch", gen_id)
        self.assertExit(w, 0)
        last = self.assertRisingEvents(events_of(w), "STATE_COMPLETED")
        self.assertEqual(last["id"], gen_id)
        g = self.vg("get", gen_id)
        self.assertExit(g, 0)
        got = json.loads(g.stdout)
        self.assertEqual(got["id"], gen_id)
        self.assertEqual(got["state"], "STATE_COMPLETED")
        self.assertEqual(got["revision"], last["revision"])
        # Watching a finished generation again: one snapshot, exit 0.
        again = self.vg("watch", gen_id)
        self.assertExit(again, 0)
        self.assertEqual(len(events_of(again)), 1)

    def test_list_filters_limit_and_paging(self):
        marker = "m" + uuid.uuid4().hex[:8]
        ids = [self.detach(f"clip {i}", "--label", f"batch={marker}")
               for i in range(3)]
        for gen_id in ids:
            self.assertExit(self.vg("watch", gen_id), 0)
        p = self.vg("list", "--label", f"batch={marker}")
        self.assertExit(p, 0)
        listed = [g["id"] for g in json.loads(p.stdout)["generations"]]
        self.assertEqual(listed, list(reversed(ids)))  # newest first
        p = self.vg("list", "--label", f"batch={marker}", "--limit", "2")
        self.assertExit(p, 0)
        page = json.loads(p.stdout)
        self.assertEqual([g["id"] for g in page["generations"]],
                         list(reversed(ids))[:2])
        token = page["nextPageToken"]
        self.assertTrue(token)
        p = self.vg("list", "--label", f"batch={marker}", "--page-size", "2",
                    "--page-token", token)
        self.assertExit(p, 0)
        rest = json.loads(p.stdout)
        self.assertEqual([g["id"] for g in rest["generations"]], [ids[0]])
        self.assertFalse(rest.get("nextPageToken"))
        # --limit spanning pages of one.
        p = self.vg("list", "--label", f"batch={marker}", "--limit", "3",
                    "--page-size", "1")
        self.assertExit(p, 0)
        self.assertEqual(len(json.loads(p.stdout)["generations"]), 3)
        p = self.vg("list", "--label", f"batch={marker}", "--state", "failed",
                    "--state", "queued")
        self.assertExit(p, 0)
        self.assertEqual(json.loads(p.stdout).get("generations", []), [])
        p = self.vg("list", "--label", f"batch={marker}", "--state",
                    "completed")
        self.assertExit(p, 0)
        self.assertEqual(len(json.loads(p.stdout)["generations"]), 3)

    def test_not_found_and_invalid_argument_exit_3(self):
        p = self.vg("get", "does-not-exist")
        self.assertExit(p, 3)
        self.assertRegex(p.stderr, r"(?m)^error: NOT_FOUND: ")
        p = self.vg("generate", "bad duration", "--duration", "7")
        self.assertExit(p, 3)
        self.assertRegex(p.stderr, r"(?m)^error: INVALID_ARGUMENT: ")
        p = self.vg("watch", "does-not-exist")
        self.assertExit(p, 3)
        self.assertRegex(p.stderr, r"(?m)^error: NOT_FOUND: ")
        # Ids may start with '-' (URL-safe base64): still an id, not a flag.
        for args in (["get", "-Zno_such-id"], ["watch", "-Zno_such-id"],
                     ["cancel", "-Zno_such-id"],
                     ["download", "-Zno_such-id", "-o", "/dev/null"]):
            p = self.vg(*args)
            self.assertExit(p, 3)
            self.assertRegex(p.stderr, r"(?m)^error: NOT_FOUND: ")


class SlowServerTest(ClientTestCase):
    """Cancel needs a generation that stays in flight for a while."""
    server_args = ["--simulate", "--store=memory", "--sim_queued_for=20s",
                   "--sim_generating_for=20s", *FAST_POLL]

    def test_cancel_then_watch_exits_1(self):
        gen_id = self.detach("a slow one")
        c = self.vg("cancel", gen_id)
        self.assertExit(c, 0)
        cancelled = json.loads(c.stdout)
        self.assertEqual(cancelled["state"], "STATE_CANCELLED")
        w = self.vg("watch", gen_id)
        self.assertExit(w, 1)
        self.assertRisingEvents(events_of(w), "STATE_CANCELLED")
        d = self.vg("download", gen_id, "-o", os.path.join(self.tmp, "x.mp4"))
        self.assertExit(d, 1)
        self.assertRegex(d.stderr, r"(?m)^error: FAILED_PRECONDITION: ")

    def test_watch_cancelled_midstream_exits_1(self):
        gen_id = self.detach("watched then cancelled")
        w = subprocess.Popen([VIDEOGEN, "--server", self.server.addr, "watch",
                              gen_id], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        first = json.loads(w.stdout.readline())  # the snapshot
        self.assertEqual(first["type"], "TYPE_SNAPSHOT")
        self.assertExit(self.vg("cancel", gen_id), 0)
        out, err = w.communicate(timeout=30)
        self.assertEqual(w.returncode, 1, err)
        events = [first] + events_of(subprocess.CompletedProcess(
            [], 1, out, err))
        self.assertRisingEvents(events, "STATE_CANCELLED")


class FailingServerTest(ClientTestCase):
    """Every simulated job fails (--sim_error_rate=1.0)."""
    server_args = ["--simulate", "--store=memory", "--sim_error_rate=1.0",
                   *FAST_SIM, *FAST_POLL]

    def test_failed_generation_exits_1(self):
        p = self.vg("generate", "doomed")
        self.assertExit(p, 1)
        last = self.assertRisingEvents(events_of(p), "STATE_FAILED")
        self.assertTrue(last["error"]["reason"])
        self.assertEqual(p.stderr.count("error:"), 0, p.stderr)


class CommandLineTest(unittest.TestCase):
    """Usage errors (2), connection errors (3) and --help; no server needed."""

    def setUp(self):
        self.closed = f"127.0.0.1:{free_port()}"

    def vg(self, *args):
        return run_client(self.closed, *args, timeout=30)

    def test_usage_errors_exit_2(self):
        cases = [
            [],
            ["generate"],
            ["generate", "x", "--label", "novalue"],
            ["generate", "x", "--label", "=v"],
            ["generate", "x", "--duration", "five"],
            ["generate", "x", "--no-such-flag"],
            ["list", "--state", "sleeping"],
            ["list", "--limit", "-1"],
            ["--timeout", "soon", "get", "x"],
            ["download", "abc"],
            ["watch"],
            ["frobnicate"],
        ]
        for args in cases:
            with self.subTest(args=args):
                p = self.vg(*args)
                self.assertEqual(p.returncode, 2, (p.stdout, p.stderr))
                self.assertTrue(p.stderr.strip())

    def test_connection_refused_exits_3(self):
        for args in (["get", "x"], ["list"], ["cancel", "x"],
                     ["watch", "x"], ["generate", "hello"],
                     ["generate", "hello", "--detach"], ["download", "x",
                                                         "-o", "/dev/null"]):
            with self.subTest(args=args):
                p = self.vg(*args)
                self.assertEqual(p.returncode, 3, (p.stdout, p.stderr))
                self.assertRegex(p.stderr, r"(?m)^error: UNAVAILABLE: .+")

    def test_download_refused_url_exits_3(self):
        with tempfile.TemporaryDirectory() as d:
            p = self.vg("download", f"http://{self.closed}/v.mp4", "-o",
                        os.path.join(d, "v.mp4"))
        self.assertEqual(p.returncode, 3, p.stderr)
        self.assertRegex(p.stderr, r"(?m)^error: UNAVAILABLE: ")

    def test_help_everywhere_with_examples(self):
        p = self.vg("--help")
        self.assertEqual(p.returncode, 0)
        for sub in ("generate", "watch", "get", "list", "cancel", "download"):
            self.assertIn(sub, p.stdout)
            with self.subTest(sub=sub):
                h = self.vg(sub, "--help")
                self.assertEqual(h.returncode, 0, h.stderr)
                self.assertIn("Examples:", h.stdout)
                self.assertIn(f"videogen {sub}", h.stdout)


class DownloadTest(ClientTestCase):
    """The simulator's MP4, by id, by URL, resumed, and via --output."""

    def finished(self):
        gen_id = self.detach("something to download")
        w = self.vg("watch", gen_id)
        self.assertExit(w, 0)
        video = events_of(w)[-1]["generation"]["video"]
        return gen_id, video

    def test_generate_output_downloads_mp4(self):
        path = os.path.join(self.tmp, "gen.mp4")
        p = self.vg("generate", "with output", "-o", path)
        self.assertExit(p, 0)
        video = events_of(p)[-1]["generation"]["video"]
        size = os.path.getsize(path)
        self.assertGreater(size, 0)
        if int(video.get("fileSizeBytes", 0)) > 0:
            self.assertEqual(size, int(video["fileSizeBytes"]))
        with open(path, "rb") as f:
            self.assertEqual(f.read(12)[4:8], b"ftyp")  # an MP4 box
        summary = json_lines(p.stdout)[-1]["download"]
        self.assertEqual(summary["bytes"], size)
        self.assertEqual(summary["path"], path)

    def test_download_by_id_and_by_url(self):
        gen_id, video = self.finished()
        by_id = os.path.join(self.tmp, "by-id.mp4")
        p = self.vg("download", gen_id, "--output", by_id)
        self.assertExit(p, 0)
        by_url = os.path.join(self.tmp, "by-url.mp4")
        p = self.vg("download", video["url"], "--output", by_url)
        self.assertExit(p, 0)
        self.assertEqual(json_lines(p.stdout)[-1]["download"]["expectedBytes"],
                         os.path.getsize(by_url))
        with open(by_id, "rb") as a, open(by_url, "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertGreater(os.path.getsize(by_id), 0)

    def test_resume_partial_file(self):
        gen_id, video = self.finished()
        full = os.path.join(self.tmp, "full.mp4")
        self.assertExit(self.vg("download", gen_id, "-o", full), 0)
        with open(full, "rb") as f:
            content = f.read()
        self.assertGreater(len(content), 100)
        part = os.path.join(self.tmp, "part.mp4")
        n = len(content) // 3
        with open(part, "wb") as f:
            f.write(content[:n])
        p = self.vg("download", video["url"], "-o", part)
        self.assertExit(p, 0)
        summary = json_lines(p.stdout)[-1]["download"]
        self.assertEqual(summary["resumedFrom"], n)
        with open(part, "rb") as f:
            self.assertEqual(f.read(), content)
        # A file that is already complete stays as it is.
        p = self.vg("download", gen_id, "-o", part)
        self.assertExit(p, 0)
        with open(part, "rb") as f:
            self.assertEqual(f.read(), content)

    def test_missing_file_is_not_found(self):
        _, video = self.finished()
        url = re.sub(r"/[^/]+$", "/no-such-file.mp4", video["url"])
        p = self.vg("download", url, "-o", os.path.join(self.tmp, "nf.mp4"))
        self.assertExit(p, 3)
        self.assertRegex(p.stderr, r"(?m)^error: NOT_FOUND: ")


class ReconnectTest(unittest.TestCase):
    """A watch survives a server restart (sqlite store, external sim)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vg-client-restart-")
        self.sim = Sim("--queued_for=1s", "--generating_for=5s")
        env = dict(os.environ, AIMLAPI_KEY="sim-key")
        self.server = Server(
            ["--store=sqlite", f"--data_dir={self.tmp}/data",
             f"--upstream_url={self.sim.url}", *FAST_POLL], env=env)
        self.server.start()

    def tearDown(self):
        self.server.stop(signal.SIGKILL)
        self.sim.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def test_watch_resumes_across_restart(self):
        d = run_client(self.server.addr, "generate", "restart me", "--detach")
        self.assertEqual(d.returncode, 0, d.stderr + self.server.log())
        gen_id = d.stdout.strip()
        w = subprocess.Popen([VIDEOGEN, "--server", self.server.addr, "watch",
                              gen_id, "--reconnect-timeout", "60s"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        first = json.loads(w.stdout.readline())
        self.assertEqual(first["generation"]["id"], gen_id)
        self.server.stop(signal.SIGTERM)
        time.sleep(0.5)  # the watcher retries against a closed port
        self.server.start()
        out, err = w.communicate(timeout=60)
        self.assertEqual(w.returncode, 0, f"{out}\n{err}\n{self.server.log()}")
        self.assertIn("reconnecting", err)
        events = [first] + [json.loads(l) for l in out.splitlines() if l]
        revisions = [int(e["generation"]["revision"]) for e in events]
        self.assertEqual(revisions, sorted(set(revisions)), revisions)
        self.assertEqual(events[-1]["generation"]["state"], "STATE_COMPLETED")
        self.assertTrue(events[-1]["generation"]["video"]["url"])

    def test_generate_resumes_across_restart(self):
        g = subprocess.Popen([VIDEOGEN, "--server", self.server.addr,
                              "generate", "restart me too"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        first = json.loads(g.stdout.readline())
        self.server.stop(signal.SIGTERM)
        self.server.start()
        out, err = g.communicate(timeout=60)
        self.assertEqual(g.returncode, 0, f"{out}\n{err}\n{self.server.log()}")
        events = [first] + [json.loads(l) for l in out.splitlines() if l]
        revisions = [int(e["generation"]["revision"]) for e in events]
        self.assertEqual(revisions, sorted(set(revisions)), revisions)
        self.assertEqual({e["generation"]["id"] for e in events},
                         {first["generation"]["id"]})
        self.assertEqual(events[-1]["generation"]["state"], "STATE_COMPLETED")


class TlsTest(unittest.TestCase):
    """--tls with --ca-cert against a server with a self-signed certificate."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vg-client-tls-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        cert = os.path.join(self.tmp, "cert.pem")
        key = os.path.join(self.tmp, "key.pem")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", key, "-out", cert, "-days", "1", "-subj",
             "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
            check=True, capture_output=True, timeout=60)
        self.cert = cert
        self.server = Server(["--simulate", "--store=memory", *FAST_SIM,
                              *FAST_POLL, f"--tls_cert_file={cert}",
                              f"--tls_key_file={key}"])
        self.addCleanup(self.server.stop)
        self.server.wait_ready = lambda: None  # plaintext probe cannot work
        self.server.start()

    def vg(self, *args):
        return run_client(self.server.addr, *args, timeout=60)

    def test_generate_over_tls(self):
        deadline = time.time() + 30
        while True:  # wait for the TLS listener
            p = self.vg("--tls", "--ca-cert", self.cert, "get", "nope")
            if "NOT_FOUND" in p.stderr or time.time() > deadline:
                break
            time.sleep(0.1)
        self.assertEqual(p.returncode, 3, p.stderr + self.server.log())
        self.assertIn("NOT_FOUND", p.stderr)
        p = self.vg("--tls", "--ca-cert", self.cert, "generate", "secure fox")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(events_of(p)[-1]["generation"]["state"],
                         "STATE_COMPLETED")
        # Plaintext against a TLS port, and TLS without the CA: errors (3).
        # (The handshake may also outlast the deadline on a loaded machine.)
        for args in (["--timeout", "10s"], ["--tls", "--timeout", "10s"]):
            p = self.vg(*args, "get", "nope")
            self.assertEqual(p.returncode, 3, p.stderr)
            self.assertRegex(p.stderr,
                             r"(?m)^error: (UNAVAILABLE|DEADLINE_EXCEEDED): ")


class TerminalTest(ClientTestCase):
    """The live line and the summary, on a real pseudo-terminal (tmux)."""
    server_args = ["--simulate", "--store=memory", "--sim_queued_for=1s",
                   "--sim_generating_for=3s", *FAST_POLL]

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args],
                              capture_output=True, text=True, timeout=30)

    def setUp(self):
        self.socket = f"vg-client-{os.getpid()}"
        self.addCleanup(self.tmux, "kill-server")

    def pane(self):
        return self.tmux("capture-pane", "-p", "-t", "vg").stdout

    def wait_for(self, pattern, timeout=30):
        deadline = time.time() + timeout
        screen = ""
        while time.time() < deadline:
            screen = self.pane()
            m = re.search(pattern, screen, re.M)
            if m:
                return m, screen
            time.sleep(0.05)
        self.fail(f"{pattern!r} never appeared; screen:\n{screen}\n"
                  f"server log:\n{self.server.log()}")

    def test_live_line_and_summary(self):
        out = os.path.join(self.tmp, "tty.mp4")
        cmd = (f"{VIDEOGEN} --server {self.server.addr} generate "
               f"'a red fox on a tty' -o {out}; echo EXIT=$?; sleep 60")
        r = self.tmux("new-session", "-d", "-s", "vg", "-x", "160", "-y", "40",
                      "env", "LANG=C.UTF-8", "sh", "-c", cmd)
        self.assertEqual(r.returncode, 0, r.stderr)
        # The live line: spinner, state, upstream status, revision, time.
        m, screen = self.wait_for(
            r"^(\S) (QUEUED|GENERATING)(  upstream: \S+)?  rev \d+  \d+:\d\d")
        self.assertIn(m.group(1), "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏|/-\\")
        self.wait_for(r"^\S GENERATING  upstream: \S+  rev \d+  \d+:\d\d")
        _, screen = self.wait_for(r"^EXIT=\d+")
        self.assertIn("EXIT=0", screen)
        self.assertRegex(screen, r"(?m)^COMPLETED  [A-Za-z0-9_-]+  \(revision")
        self.assertRegex(screen, r"(?m)^  video: http://127\.0\.0\.1:\d+/\S+")
        self.assertRegex(screen, r"(?m)^saved .*tty\.mp4 \(")
        # The live line was replaced by the summary, not left behind.
        self.assertNotRegex(screen, r"(?m)^\S (QUEUED|GENERATING)  upstream")
        self.assertRegex(screen, r"request_id: [0-9a-f-]{36}")
        self.assertGreater(os.path.getsize(out), 0)


def main():
    global VIDEOGEN, SERVER, SIM
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    VIDEOGEN, SERVER, SIM = sys.argv[1:4]
    for path in (VIDEOGEN, SERVER, SIM):
        if not os.access(path, os.X_OK):
            print(f"missing binary: {path} (build it first)", file=sys.stderr)
            sys.exit(1)
    unittest.main(argv=[sys.argv[0], "-v", *sys.argv[4:]])


if __name__ == "__main__":
    main()
