#!/usr/bin/python3
"""End-to-end tests of the `videogen` client against real binaries.

Usage: client_e2e.py VIDEOGEN VIDEOGEN_SERVER VIDEOGEN_SIM [unittest names...]

Every test runs the real client against a real videogen-server on loopback
(with its in-process simulator, or with the standalone videogen-sim when the
upstream must outlive a server restart). Servers run with --auth=keys (the
default): each gets a key from `videogen-server keys create` against its own
SQLite data dir, and the client gets it from VIDEOGEN_API_KEY or --api_key.
Standard library only, except SanitizeTest, whose fake server needs Debian's
python3-grpcio (and protoc with grpc_python_plugin).
"""

import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

VIDEOGEN = SERVER = SIM = None

UUID4 = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FAST_SIM = ["--sim_queued_for=300ms", "--sim_generating_for=700ms"]
FAST_POLL = ["--poll_initial_delay=50ms", "--poll_interval=100ms",
             "--heartbeat_interval=1s", "--drain_grace=2s"]
# What the live line may say about the estimate (server/core/estimate_text.h).
ESTIMATE_TEXT = (r"(about \d+ min left|about \d+ h left|less than a minute left|"
                 r"any moment now|running long)")


def free_port():
    """A port that was free a moment ago (bind 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(key=None, http_url=None, extra=None):
    """The client's environment: only the key and HTTP URL given here."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIDEOGEN_API_KEY", "VIDEOGEN_HTTP_URL",
                        "VIDEOGEN_WEBHOOK_SECRET")}
    if key is not None:
        env["VIDEOGEN_API_KEY"] = key
    if http_url is not None:
        env["VIDEOGEN_HTTP_URL"] = http_url
    env.update(extra or {})
    return env


def run_client(server_addr, *args, timeout=60, key=None, http_url=None,
               env=None, input=None):
    return subprocess.run([VIDEOGEN, "--server", server_addr, *args],
                          capture_output=True, text=True, timeout=timeout,
                          env=client_env(key, http_url, env), input=input)


def create_key(data_dir, tenant="e2e", admin=False):
    """`videogen-server keys create` on a SQLite store: the JSON it prints."""
    os.makedirs(data_dir, exist_ok=True)
    argv = [SERVER, "keys", "create", f"--tenant={tenant}", "--store=sqlite",
            f"--data_dir={data_dir}"]
    if admin:
        argv.append("--admin")
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        raise AssertionError(f"keys create failed ({p.returncode}): {p.stderr}")
    record = json.loads(p.stdout)
    for field in ("key", "key_id", "webhook_secret"):
        if not record.get(field):
            raise AssertionError(f"keys create printed no {field}: {p.stdout}")
    return record


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def events_of(proc):
    """The GenerationEvent objects of a finished client process."""
    return [e for e in json_lines(proc.stdout) if "generation" in e]


class Server:
    """One videogen-server process on a fixed loopback port, with a SQLite
    store (a temp data dir unless args name one) and an API key for it
    (tenant "e2e"). `tenants` are more keys, {name: admin?}, in .keys; all
    are made before the server starts (it locks its data dir)."""

    def __init__(self, args, port=None, env=None, log_dir=None, http=False,
                 tenants=None):
        self.args = list(args)
        data_dirs = [a.split("=", 1)[1] for a in self.args
                     if a.startswith("--data_dir=")]
        if data_dirs:
            self.data_dir = data_dirs[-1]
        else:
            self.data_dir = tempfile.mkdtemp(prefix="vg-client-data-")
            self.args.append(f"--data_dir={self.data_dir}")
        if not any(a.startswith("--store=") for a in self.args):
            self.args.append("--store=sqlite")
        self.http_port = free_port() if http else None
        if http:
            self.args.append(f"--http_listen=127.0.0.1:{self.http_port}")
        self.port = port or free_port()
        self.env = env
        self.log_dir = log_dir or tempfile.mkdtemp(prefix="vg-client-log-")
        self.proc = None
        self.starts = 0
        os.makedirs(self.data_dir, exist_ok=True)
        self.key_record = create_key(self.data_dir)
        self.key = self.key_record["key"]
        self.keys = {name: create_key(self.data_dir, name, admin)
                     for name, admin in (tenants or {}).items()}

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    @property
    def http_url(self):
        return f"http://127.0.0.1:{self.http_port}" if self.http_port else None

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
            p = run_client(self.addr, "--timeout", "1s", "get", "no-such-id",
                           key=self.key)
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
    server_args = ["--simulate", *FAST_SIM, *FAST_POLL]
    server_http = False  # also --http_listen (mirrored videos)
    server_tenants = None  # more keys: {tenant: admin?}

    @classmethod
    def setUpClass(cls):
        cls.server = Server(cls.server_args, http=cls.server_http,
                            tenants=cls.server_tenants).start()
        cls.tmp = tempfile.mkdtemp(prefix="vg-client-")

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        shutil.rmtree(cls.server.data_dir, ignore_errors=True)

    def vg(self, *args, timeout=60, key=None, **kwargs):
        """The client with this server's key (from VIDEOGEN_API_KEY)."""
        return run_client(self.server.addr, *args, timeout=timeout,
                          key=self.server.key if key is None else key,
                          **kwargs)

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
    server_args = ["--simulate", "--sim_queued_for=20s",
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
                             stderr=subprocess.PIPE, text=True,
                             env=client_env(self.server.key))
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
    server_args = ["--simulate", "--sim_error_rate=1.0", *FAST_SIM,
                   *FAST_POLL]

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
            ["--http_url", "127.0.0.1:8080", "get", "x"],
            ["webhook"],
            ["webhook", "verify", "--frobnicate"],
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

    def test_bad_key_is_a_usage_error_and_not_echoed(self):
        secret = "vgk_has space_SECRETPART"
        p = run_client(self.closed, "get", "x", key=secret)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn("API key", p.stderr)
        self.assertNotIn("SECRETPART", p.stdout + p.stderr)
        p = run_client(self.closed, "--api_key", secret, "get", "x")
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertNotIn("SECRETPART", p.stdout + p.stderr)

    def test_help_never_shows_the_key(self):
        p = run_client(self.closed, "--help", key="vgk_SECRETPART")
        self.assertEqual(p.returncode, 0)
        self.assertIn("VIDEOGEN_API_KEY", p.stdout)
        self.assertIn("--api_key", p.stdout)
        self.assertNotIn("SECRETPART", p.stdout + p.stderr)

    def test_help_everywhere_with_examples(self):
        p = self.vg("--help")
        self.assertEqual(p.returncode, 0)
        h = self.vg("webhook", "verify", "--help")
        self.assertEqual(h.returncode, 0, h.stderr)
        self.assertIn("videogen webhook verify", h.stdout)
        for sub in ("generate", "watch", "get", "list", "cancel", "download",
                    "webhook"):
            self.assertIn(sub, p.stdout)
            with self.subTest(sub=sub):
                h = self.vg(sub, "--help")
                self.assertEqual(h.returncode, 0, h.stderr)
                self.assertIn("Examples:", h.stdout)
                self.assertIn(f"videogen {sub}", h.stdout)


class DownloadTest(ClientTestCase):
    """The simulator's MP4, by id, by URL, resumed, and via --output (no
    --http_url: the upstream URL, checked against video.sha256)."""

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
        self.assertEqual(summary["source"], "upstream")
        if video.get("sha256"):
            self.assertTrue(summary["sha256Verified"])
            self.assertEqual(sha256_file(path), video["sha256"])

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
        d = run_client(self.server.addr, "generate", "restart me", "--detach",
                       key=self.server.key)
        self.assertEqual(d.returncode, 0, d.stderr + self.server.log())
        gen_id = d.stdout.strip()
        # The key as a flag this time (the others use VIDEOGEN_API_KEY).
        w = subprocess.Popen([VIDEOGEN, "--server", self.server.addr,
                              "--api_key", self.server.key, "watch",
                              gen_id, "--reconnect-timeout", "60s"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, env=client_env())
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
                             text=True, env=client_env(self.server.key))
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
        self.server = Server(["--simulate", *FAST_SIM, *FAST_POLL,
                              f"--tls_cert_file={cert}",
                              f"--tls_key_file={key}"])
        self.addCleanup(self.server.stop)
        self.server.wait_ready = lambda: None  # plaintext probe cannot work
        self.server.start()

    def vg(self, *args):
        return run_client(self.server.addr, *args, timeout=60,
                          key=self.server.key)

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


class TmuxMixin:
    """Runs a command in a detached tmux session and reads its screen."""

    def start_tmux(self, cmd, env):
        self.socket = f"vg-client-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.addCleanup(self.tmux, "kill-server")
        env_args = [f"{k}={v}" for k, v in env.items()]
        r = self.tmux("new-session", "-d", "-s", "vg", "-x", "160", "-y", "40",
                      "env", "LANG=C.UTF-8", *env_args, "sh", "-c", cmd)
        self.assertEqual(r.returncode, 0, r.stderr)

    def tmux(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args],
                              capture_output=True, text=True, timeout=30)

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


class TerminalTest(TmuxMixin, ClientTestCase):
    """The live line and the summary, on a real pseudo-terminal (tmux)."""
    server_args = ["--simulate", "--sim_queued_for=1s",
                   "--sim_generating_for=3s", *FAST_POLL]
    server_http = True

    def test_live_line_and_summary(self):
        out = os.path.join(self.tmp, "tty.mp4")
        cmd = (f"{VIDEOGEN} --server {self.server.addr} generate "
               f"'a red fox on a tty' -o {out}; echo EXIT=$?; sleep 60")
        self.start_tmux(cmd, {"VIDEOGEN_API_KEY": self.server.key,
                              "VIDEOGEN_HTTP_URL": self.server.http_url})
        # The live line: spinner, state, upstream status, revision, time and
        # the estimate. A fresh server has no samples, so the documented
        # timing of a 5 s clip (5-6 minutes) stands in.
        m, screen = self.wait_for(
            r"^(\S) (QUEUED|GENERATING)(  upstream: \S+)?  rev \d+  \d+:\d\d"
            r"  about [56] min left$")
        self.assertIn(m.group(1), "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏|/-\\")
        self.wait_for(r"^\S GENERATING  upstream: \S+  rev \d+  \d+:\d\d"
                      r"  about [56] min left$")
        _, screen = self.wait_for(r"^EXIT=\d+")
        self.assertIn("EXIT=0", screen)
        self.assertRegex(screen, r"(?m)^COMPLETED  [A-Za-z0-9_-]+  \(revision")
        self.assertRegex(screen, r"(?m)^  video: http://127\.0\.0\.1:\d+/\S+")
        self.assertRegex(screen, r"(?m)^  mirror: /v1/media/\S+")
        self.assertRegex(screen, r"(?m)^  sha256: [0-9a-f]{64}$")
        self.assertRegex(
            screen, r"(?m)^saved .*tty\.mp4 \(.*from the server's copy, "
                    r"SHA-256 verified\)")
        # The live line was replaced by the summary, not left behind, and a
        # finished generation shows no estimate.
        self.assertNotRegex(screen, r"(?m)^\S (QUEUED|GENERATING)  upstream")
        self.assertNotRegex(screen, ESTIMATE_TEXT)
        self.assertRegex(screen, r"request_id: [0-9a-f-]{36}")
        self.assertGreater(os.path.getsize(out), 0)


class AuthTest(ClientTestCase):
    """--auth=keys: the key from VIDEOGEN_API_KEY or --api_key, clear errors
    without one, tenants kept apart, and the key never printed."""
    server_tenants = {"other": False, "ops": True}

    def test_no_key_is_unauthenticated_with_a_hint(self):
        for args in (["get", "x"], ["list"], ["cancel", "x"], ["watch", "x"],
                     ["generate", "hello"], ["generate", "hello", "--detach"],
                     ["download", "x", "-o", os.path.join(self.tmp, "x")]):
            with self.subTest(args=args):
                p = run_client(self.server.addr, *args)  # no key at all
                self.assertExit(p, 3)
                self.assertRegex(p.stderr, r"(?m)^error: UNAUTHENTICATED: ")
                self.assertIn("set VIDEOGEN_API_KEY or --api_key", p.stderr)
                self.assertEqual(p.stdout, "")

    def test_unknown_key_is_refused_and_never_printed(self):
        record = create_key(os.path.join(self.tmp, "other-store"))
        other = record["key"]  # a real key, but of another store
        for args in (["get", "x"], ["generate", "hello"]):
            with self.subTest(args=args):
                p = self.vg(*args, key=other)
                self.assertExit(p, 3)
                self.assertRegex(p.stderr, r"(?m)^error: UNAUTHENTICATED: ")
                self.assertIn("refused the API key", p.stderr)
                self.assertNotIn(other, p.stdout + p.stderr)
        p = run_client(self.server.addr, "--api_key", other, "get", "x")
        self.assertExit(p, 3)
        self.assertNotIn(other, p.stdout + p.stderr)

    def test_key_as_flag_and_env_with_trailing_newline(self):
        p = run_client(self.server.addr, "--api_key", self.server.key,
                       "generate", "by flag", "--detach")
        self.assertExit(p, 0)
        gen_id = p.stdout.strip()
        # A key read from a file usually ends in a newline.
        p = self.vg("get", gen_id, key=self.server.key + "\n")
        self.assertExit(p, 0)
        self.assertEqual(json.loads(p.stdout)["id"], gen_id)

    def test_tenants_do_not_see_each_other(self):
        a_id = self.detach("tenant a's secret prompt")
        other = self.server.keys["other"]["key"]
        for args in (["get", a_id], ["watch", a_id], ["cancel", a_id]):
            with self.subTest(args=args):
                p = self.vg(*args, key=other)
                self.assertExit(p, 3)
                self.assertRegex(p.stderr, r"(?m)^error: NOT_FOUND: ")
        p = self.vg("list", "--limit", "100", key=other)
        self.assertExit(p, 0)
        self.assertNotIn(a_id, p.stdout)
        admin = self.server.keys["ops"]["key"]
        p = self.vg("get", a_id, key=admin)
        self.assertExit(p, 0)
        self.assertEqual(json.loads(p.stdout)["tenant"], "e2e")


class EstimateTest(TmuxMixin, unittest.TestCase):
    """The estimate learned from finished generations: after three quick
    ones, a slow one is "running long" on the live line."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vg-client-estimate-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.sim_port = free_port()
        self.sim = Sim(f"--listen=127.0.0.1:{self.sim_port}",
                       "--queued_for=100ms", "--generating_for=400ms")
        self.addCleanup(lambda: self.sim.stop())
        self.server = Server(
            [f"--data_dir={self.tmp}/data",
             f"--upstream_url=http://127.0.0.1:{self.sim_port}", *FAST_POLL],
            env=dict(os.environ, AIMLAPI_KEY="sim-key"))
        self.addCleanup(self.server.stop)
        self.server.start()

    def vg(self, *args):
        return run_client(self.server.addr, *args, key=self.server.key)

    def test_running_long_after_learning(self):
        for i in range(3):
            p = self.vg("generate", f"quick {i}")
            self.assertEqual(p.returncode, 0, p.stderr + self.server.log())
        # The same upstream, now much slower than what was learned.
        self.sim.stop()
        self.sim = Sim(f"--listen=127.0.0.1:{self.sim_port}",
                       "--queued_for=500ms", "--generating_for=60s")
        p = self.vg("generate", "slow", "--detach")
        self.assertEqual(p.returncode, 0, p.stderr)
        gen_id = p.stdout.strip()
        g = json.loads(self.vg("get", gen_id).stdout)
        self.assertGreaterEqual(g["estimate"]["samples"], 3, g)
        self.start_tmux(f"{VIDEOGEN} --server {self.server.addr} watch "
                        f"{gen_id}; sleep 60",
                        {"VIDEOGEN_API_KEY": self.server.key})
        self.wait_for(r"^\S (QUEUED|GENERATING)(  upstream: \S+)?  rev \d+  "
                      r"\d+:\d\d  running long$")
        p = self.vg("cancel", gen_id)
        self.assertEqual(p.returncode, 0, p.stderr)


class MirrorDownloadTest(unittest.TestCase):
    """`download` prefers the server's copy (video.mirror_url on the HTTP
    listener, with the key, Range resume, SHA-256 checked) and falls back to
    the upstream URL."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="vg-client-mirror-")
        cls.sim = Sim("--queued_for=200ms", "--generating_for=500ms")
        cls.server = Server([f"--upstream_url={cls.sim.url}", *FAST_POLL],
                            env=dict(os.environ, AIMLAPI_KEY="sim-key"),
                            http=True).start()

    @classmethod
    def tearDownClass(cls):
        cls.server.stop()
        if cls.sim is not None:
            cls.sim.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        shutil.rmtree(cls.server.data_dir, ignore_errors=True)

    def vg(self, *args, http_url=None):
        return run_client(self.server.addr, *args, key=self.server.key,
                          http_url=http_url)

    def assertExit(self, proc, code):
        self.assertEqual(
            proc.returncode, code,
            f"exit {proc.returncode}, want {code}\nstdout:\n{proc.stdout}\n"
            f"stderr:\n{proc.stderr}\nserver log:\n{self.server.log()}")

    def completed(self, prompt):
        p = self.vg("generate", prompt)
        self.assertExit(p, 0)
        g = events_of(p)[-1]["generation"]
        self.assertEqual(g["state"], "STATE_COMPLETED")
        video = g["video"]
        self.assertTrue(video.get("mirrorUrl"), g)
        self.assertRegex(video.get("sha256", ""), r"^[0-9a-f]{64}$")
        return g["id"], video

    def summary(self, proc):
        return json_lines(proc.stdout)[-1]["download"]

    def test_1_fallback_to_upstream(self):
        gen_id, video = self.completed("for the fallback")
        # No --http_url: the copy cannot be reached; the upstream URL is used
        # and still checked against the mirror's SHA-256.
        path = os.path.join(self.tmp, "no-listener.mp4")
        p = self.vg("download", gen_id, "-o", path)
        self.assertExit(p, 0)
        self.assertIn("VIDEOGEN_HTTP_URL", p.stderr)
        s = self.summary(p)
        self.assertEqual(s["source"], "upstream")
        self.assertEqual(s["url"], video["url"])
        self.assertTrue(s["sha256Verified"])
        self.assertEqual(sha256_file(path), video["sha256"])
        # A listener that is not there: the copy fails, the upstream serves.
        path = os.path.join(self.tmp, "dead-listener.mp4")
        p = self.vg("download", gen_id, "-o", path,
                    http_url=f"http://127.0.0.1:{free_port()}")
        self.assertExit(p, 0)
        self.assertRegex(p.stderr, r"note: the download from the mirror "
                                   r"failed \(UNAVAILABLE: .*\); trying the "
                                   r"video URL")
        self.assertEqual(self.summary(p)["source"], "upstream")
        self.assertEqual(sha256_file(path), video["sha256"])

    def test_1_no_mirror_server_uses_upstream(self):
        server = Server(["--simulate", "--mirror=none", *FAST_SIM, *FAST_POLL],
                        http=True).start()
        try:
            p = run_client(server.addr, "generate", "unmirrored", key=server.key)
            self.assertEqual(p.returncode, 0, p.stderr)
            g = events_of(p)[-1]["generation"]
            self.assertFalse(g["video"].get("mirrorUrl"), g)
            path = os.path.join(self.tmp, "unmirrored.mp4")
            p = run_client(server.addr, "download", g["id"], "-o", path,
                           key=server.key, http_url=server.http_url)
            self.assertEqual(p.returncode, 0, p.stderr)
            s = self.summary(p)
            self.assertEqual(s["source"], "upstream")
            self.assertFalse(s["sha256Verified"])
            self.assertGreater(os.path.getsize(path), 0)
        finally:
            server.stop()

    def test_2_mirror_outlives_the_upstream(self):
        gen_id, video = self.completed("for the mirror")
        full = os.path.join(self.tmp, "from-mirror-first.mp4")
        p = self.vg("download", gen_id, "-o", full,
                    http_url=self.server.http_url)
        self.assertExit(p, 0)
        with open(full, "rb") as f:
            content = f.read()
        # The upstream goes away; the server's copy stays.
        type(self).sim.stop()
        type(self).sim = None
        path = os.path.join(self.tmp, "from-mirror.mp4")
        p = self.vg("download", gen_id, "-o", path,
                    http_url=self.server.http_url)
        self.assertExit(p, 0)
        s = self.summary(p)
        self.assertEqual(s["source"], "mirror")
        self.assertEqual(s["url"], self.server.http_url + video["mirrorUrl"])
        self.assertTrue(s["sha256Verified"])
        self.assertEqual(sha256_file(path), video["sha256"])
        with open(path, "rb") as f:
            self.assertEqual(f.read(), content)
        # A partial file resumes from the mirror with a Range request.
        n = len(content) // 3
        with open(path, "wb") as f:
            f.write(content[:n])
        p = self.vg("download", gen_id, "-o", path,
                    http_url=self.server.http_url)
        self.assertExit(p, 0)
        s = self.summary(p)
        self.assertEqual((s["source"], s["resumedFrom"]), ("mirror", n))
        self.assertTrue(s["sha256Verified"])
        self.assertEqual(sha256_file(path), video["sha256"])
        # A file with the right size but other bytes (a stale download)
        # fails the checksum: it is fetched again, not kept as the video.
        with open(path, "wb") as f:
            f.write(b"\0" * len(content))
        p = self.vg("download", gen_id, "-o", path,
                    http_url=self.server.http_url)
        self.assertExit(p, 0)
        self.assertIn("SHA-256", p.stderr)  # says why it starts over
        s = self.summary(p)
        self.assertEqual((s["source"], s["resumedFrom"]), ("mirror", 0))
        self.assertEqual(sha256_file(path), video["sha256"])
        # By URL: the key goes to the listener given by --http_url only.
        url = self.server.http_url + video["mirrorUrl"]
        path = os.path.join(self.tmp, "by-url.mp4")
        p = self.vg("download", url, "-o", path, http_url=self.server.http_url)
        self.assertExit(p, 0)
        self.assertEqual(sha256_file(path), video["sha256"])
        p = self.vg("download", url, "-o", os.path.join(self.tmp, "nokey.mp4"))
        self.assertExit(p, 3)
        self.assertRegex(p.stderr, r"(?m)^error: UNAUTHENTICATED: ")
        self.assertIn("set --http_url or VIDEOGEN_HTTP_URL", p.stderr)
        self.assertNotIn(self.server.key, p.stdout + p.stderr)


# Control characters a hostile or broken server might send; the CLI's own
# live line uses only "\r" and ESC [ 2 K.
HOSTILE = "\x1b[2J\x1b]0;owned\x07\x1b[31m\u009b2J\u202e"


class SanitizeTest(unittest.TestCase):
    """A fake VideoGeneration server (Python grpcio) whose strings carry
    control characters: the CLI prints them stripped on a terminal and
    escaped in JSON, shows its estimates, and sends the key on every call."""

    KEY = "vgk_fake_0123456789abcdef"

    @classmethod
    def setUpClass(cls):
        import grpc  # Debian's python3-grpcio
        from concurrent import futures
        cls.stubs = tempfile.mkdtemp(prefix="vg-client-stubs-")
        proto = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                             "..", "proto")
        subprocess.run(
            ["protoc", "-I", proto, f"--python_out={cls.stubs}",
             f"--grpc_out={cls.stubs}",
             "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin",
             os.path.join(proto, "videogen", "v1", "video_generation.proto")],
            check=True)
        sys.path.insert(0, cls.stubs)
        from videogen.v1 import video_generation_pb2 as pb
        from videogen.v1 import video_generation_pb2_grpc as pb_grpc
        cls.pb = pb
        cls.authorizations = []
        cls.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_VideoGenerationServicer_to_server(
            cls.make_servicer(grpc, pb, pb_grpc), cls.server)
        cls.port = cls.server.add_insecure_port("127.0.0.1:0")
        cls.server.start()
        cls.addr = f"127.0.0.1:{cls.port}"

    @classmethod
    def tearDownClass(cls):
        cls.server.stop(None)
        shutil.rmtree(cls.stubs, ignore_errors=True)

    @classmethod
    def generation(cls, state, revision, estimate_in=None):
        pb = cls.pb
        g = pb.Generation(
            id="gen1", state=state, revision=revision,
            upstream_status="generating" + HOSTILE,
            request=pb.GenerateRequest(prompt="fox" + HOSTILE),
            labels={"team": "red" + HOSTILE}, tenant="t" + HOSTILE,
            done=state in (pb.Generation.STATE_COMPLETED,
                           pb.Generation.STATE_FAILED))
        g.create_time.FromSeconds(int(time.time()) - 5)
        g.update_time.FromSeconds(int(time.time()))
        if estimate_in is not None:
            expected, p90 = estimate_in
            g.estimate.expected_complete_time.FromSeconds(
                int(time.time() + expected))
            g.estimate.p90_complete_time.FromSeconds(int(time.time() + p90))
            g.estimate.samples = 7
        if state == pb.Generation.STATE_FAILED:
            g.error.code = 13
            g.error.reason = "UPSTREAM_TASK_ERROR" + HOSTILE
            g.error.message = "boom" + HOSTILE
        if state == pb.Generation.STATE_COMPLETED:
            g.video.url = "http://127.0.0.1:9/v" + HOSTILE + ".mp4"
            g.video.mirror_error = "copy failed" + HOSTILE
        return g

    @classmethod
    def make_servicer(cls, grpc, pb, pb_grpc):
        test = cls

        class Fake(pb_grpc.VideoGenerationServicer):
            def check(self, context):
                md = dict(context.invocation_metadata())
                test.authorizations.append(md.get("authorization"))
                if md.get("authorization") != "Bearer " + test.KEY:
                    context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                  f"key {md.get('authorization')} revoked"
                                  + HOSTILE)

            def stream(self, context):
                self.check(context)
                S = pb.Generation
                E = pb.GenerationEvent
                yield E(type=E.TYPE_SNAPSHOT, generation=test.generation(
                    S.STATE_QUEUED, 1, estimate_in=(185, 300)))
                time.sleep(0.6)
                yield E(type=E.TYPE_UPDATE, generation=test.generation(
                    S.STATE_GENERATING, 2, estimate_in=(-60, -10)))
                time.sleep(0.6)
                yield E(type=E.TYPE_UPDATE,
                        generation=test.generation(S.STATE_FAILED, 3))

            def Generate(self, request, context):
                yield from self.stream(context)

            def WatchGeneration(self, request, context):
                yield from self.stream(context)

            def GetGeneration(self, request, context):
                self.check(context)
                if request.id == "running":
                    return test.generation(pb.Generation.STATE_GENERATING, 2,
                                           estimate_in=(185, 300))
                return test.generation(pb.Generation.STATE_COMPLETED, 3)

            def ListGenerations(self, request, context):
                self.check(context)
                return pb.ListGenerationsResponse(
                    generations=[test.generation(
                        pb.Generation.STATE_COMPLETED, 3)],
                    next_page_token="tok" + HOSTILE)

        return Fake()

    def run_pty(self, *args, key=KEY, timeout=30):
        """The client on a pseudo-terminal; its raw output bytes."""
        master, slave = os.openpty()
        proc = subprocess.Popen(
            [VIDEOGEN, "--server", self.addr, *args], stdin=slave,
            stdout=slave, stderr=slave, close_fds=True,
            env=client_env(key, extra={"LANG": "C.UTF-8"}))
        os.close(slave)
        out = b""
        deadline = time.time() + timeout
        while time.time() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None and out:
                    continue
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        os.close(master)
        proc.wait(timeout=10)
        return proc.returncode, out

    def assertClean(self, out):
        """No control sequence but the live line's own "\\r ESC[2K"."""
        rest = out.replace(b"\x1b[2K", b"")
        for bad in (b"\x1b", b"\x07", b"\xc2\x9b", b"\xe2\x80\xae"):
            self.assertNotIn(bad, rest, out)

    def test_live_line_and_summary_are_sanitized(self):
        code, out = self.run_pty("watch", "gen1")
        self.assertEqual(code, 1, out)  # the fake generation FAILED
        self.assertClean(out)
        text = out.decode()
        self.assertIn("upstream: generating[2J]0;owned[31m2J", text)
        self.assertIn("about 3 min left", text)  # the snapshot's estimate
        self.assertIn("running long", text)  # past the update's p90
        self.assertIn("error: UPSTREAM_TASK_ERROR[2J]0;owned[31m2J: "
                      "boom[2J]0;owned[31m2J", text)

    def test_get_list_and_errors_are_sanitized(self):
        code, out = self.run_pty("get", "gen1")
        self.assertEqual(code, 0, out)
        self.assertClean(out)
        text = out.decode()
        for want in ("video: http://127.0.0.1:9/v[2J]0;owned[31m2J.mp4",
                     "mirror error: copy failed[2J]0;owned[31m2J",
                     "prompt: fox[2J]0;owned[31m2J",
                     "labels: team=red[2J]0;owned[31m2J",
                     "tenant: t[2J]0;owned[31m2J"):
            self.assertIn(want, text)
        code, out = self.run_pty("get", "running")
        self.assertEqual(code, 0, out)
        self.assertIn("estimate: about 3 min left (from 7 past generations)",
                      out.decode())
        code, out = self.run_pty("list")
        self.assertEqual(code, 0, out)
        self.assertClean(out)
        self.assertIn("next page token: tok[2J]0;owned[31m2J", out.decode())
        # The server's error message echoes the key: it is redacted.
        code, out = self.run_pty("get", "gen1", key=self.KEY + "x")
        self.assertEqual(code, 3, out)
        self.assertClean(out)
        text = out.decode()
        self.assertIn("error: UNAUTHENTICATED: key Bearer [redacted]", text)
        self.assertNotIn(self.KEY, text)

    def test_json_is_escaped_and_exact(self):
        p = run_client(self.addr, "watch", "gen1", key=self.KEY)
        self.assertEqual(p.returncode, 1, p.stderr)
        raw = p.stdout.encode()
        self.assertNotIn(b"\x1b", raw)
        self.assertNotIn(b"\xc2\x9b", raw)
        events = events_of(p)
        self.assertEqual(events[-1]["generation"]["error"]["message"],
                         "boom" + HOSTILE)
        self.assertEqual(events[0]["generation"]["upstreamStatus"],
                         "generating" + HOSTILE)
        self.assertEqual(events[0]["generation"]["estimate"]["samples"], 7)

    def test_key_sent_on_every_call(self):
        type(self).authorizations.clear()
        run_client(self.addr, "get", "gen1", key=self.KEY)
        run_client(self.addr, "list", key=self.KEY)
        run_client(self.addr, "watch", "gen1", key=self.KEY)
        run_client(self.addr, "--api_key", self.KEY, "generate", "x")
        self.assertEqual(self.authorizations, ["Bearer " + self.KEY] * 4)
        type(self).authorizations.clear()
        run_client(self.addr, "get", "gen1")
        self.assertEqual(self.authorizations, [None])


class WebhookReceiver:
    """A loopback HTTP receiver that records each delivery."""

    def __init__(self):
        received = self.received = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((dict(self.headers.items()), body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class WebhookVerifyTest(ClientTestCase):
    """`videogen webhook verify` on a real delivery from the server."""
    server_args = ["--simulate", "--webhook_allow_insecure", *FAST_SIM,
                   *FAST_POLL]
    server_tenants = {"other": False}

    def setUp(self):
        self.receiver = WebhookReceiver()
        self.addCleanup(self.receiver.stop)

    def delivery(self):
        p = self.vg("generate", "signed", "--webhook-url", self.receiver.url)
        self.assertExit(p, 0)
        deadline = time.time() + 60
        while not self.receiver.received and time.time() < deadline:
            time.sleep(0.1)
        self.assertTrue(self.receiver.received,
                        f"no delivery\n{self.server.log()}")
        headers, body = self.receiver.received[0]
        headers = {k.lower(): v for k, v in headers.items()}
        self.assertEqual(json.loads(body)["generation"]["state"],
                         "STATE_COMPLETED")
        return headers, body

    def test_real_delivery_verifies_and_tampering_does_not(self):
        headers, body = self.delivery()
        secret = self.server.key_record["webhook_secret"]
        # The signature also checks out with Python's own hmac.
        key = base64.b64decode(secret.removeprefix("whsec_"))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}."
        mac = hmac.new(key, signed.encode() + body, hashlib.sha256).digest()
        self.assertIn("v1," + base64.b64encode(mac).decode(),
                      headers["webhook-signature"].split())

        d = tempfile.mkdtemp(dir=self.tmp)
        header_file = os.path.join(d, "headers.txt")
        with open(header_file, "w") as f:
            f.write("HTTP/1.1 POST /hook\n")
            for name in ("webhook-id", "webhook-timestamp",
                         "webhook-signature"):
                f.write(f"{name}: {headers[name]}\n")
        body_file = os.path.join(d, "body.json")
        with open(body_file, "wb") as f:
            f.write(body)
        # Good: from files, with the secret in the environment.
        p = run_client("unused:1", "webhook", "verify", "--headers",
                       header_file, "--body", body_file,
                       env={"VIDEOGEN_WEBHOOK_SECRET": secret})
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(f"valid: webhook-id {headers['webhook-id']}", p.stdout)
        # Good: the body on stdin, headers as flags.
        p = subprocess.run(
            [VIDEOGEN, "webhook", "verify", "--secret", secret, "--id",
             headers["webhook-id"], "--timestamp",
             headers["webhook-timestamp"], "--signature",
             headers["webhook-signature"]],
            input=body, capture_output=True, timeout=30, env=client_env())
        self.assertEqual(p.returncode, 0, p.stderr)
        # Tampered body: rejected (exit 1).
        tampered = body.replace(b"STATE_COMPLETED", b"STATE_FAILED")
        p = subprocess.run(
            [VIDEOGEN, "webhook", "verify", "--secret", secret, "--headers",
             header_file], input=tampered, capture_output=True, timeout=30,
            env=client_env())
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn(b"invalid:", p.stderr)
        # A body with a newline added: rejected, with a hint.
        p = subprocess.run(
            [VIDEOGEN, "webhook", "verify", "--secret", secret, "--headers",
             header_file], input=body + b"\n", capture_output=True,
            timeout=30, env=client_env())
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"hint:", p.stderr)
        # Another tenant's secret: rejected.
        other = self.server.keys["other"]
        p = subprocess.run(
            [VIDEOGEN, "webhook", "verify", "--secret", other["webhook_secret"],
             "--headers", header_file, "--body", body_file],
            capture_output=True, timeout=30, env=client_env())
        self.assertEqual(p.returncode, 1, p.stdout)


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
