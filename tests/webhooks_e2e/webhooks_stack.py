"""Shared harness of the webhook end-to-end, polyglot and throughput tests:
the real videogen-server and videogen-sim binaries on free loopback ports,
Python stubs generated from proto/ at test time, and a scriptable in-process
webhook receiver that checks every signature with nothing but Python's hmac.

Binaries come from the environment (ctest sets them): VIDEOGEN_SERVER_BIN,
VIDEOGEN_SIM_BIN. A missing one is an error, never a skip.
"""
import base64
import hashlib
import hmac
import http.server
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")
START_TIMEOUT_S = 60  # the test machine is small and shared
TERMINAL = ("STATE_COMPLETED", "STATE_FAILED", "STATE_CANCELLED")

_stubs_dir = None


def stubs():
    """Generates the Python stubs once per process; returns (pb, pb_grpc)."""
    global _stubs_dir
    if _stubs_dir is None:
        out = tempfile.mkdtemp(prefix="videogen-wh-stubs-")
        subprocess.run(
            ["protoc", "-I", PROTO_DIR, f"--python_out={out}",
             f"--grpc_out={out}",
             "--plugin=protoc-gen-grpc=" + os.environ.get(
                 "GRPC_PYTHON_PLUGIN", "/usr/bin/grpc_python_plugin"),
             os.path.join(PROTO_DIR, "videogen", "v1",
                          "video_generation.proto")],
            check=True)
        sys.path.insert(0, out)
        _stubs_dir = out
    from videogen.v1 import video_generation_pb2 as pb
    from videogen.v1 import video_generation_pb2_grpc as pb_grpc
    return pb, pb_grpc


def required_env(name):
    value = os.environ.get(name, "")
    if not value or not os.access(value, os.X_OK):
        raise RuntimeError(f"{name} must name an executable (got {value!r})")
    return value


def free_port():
    """A loopback port nothing listens on (yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A child process whose output goes to a temp file (kept on failure)."""

    def __init__(self, argv, env=None, name=None):
        self.name = name or os.path.basename(argv[0])
        self.log = tempfile.NamedTemporaryFile(
            prefix=f"wh-{self.name}-", suffix=".log", delete=False)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.log,
                                     stderr=subprocess.STDOUT,
                                     env={**os.environ, **(env or {})})

    def output(self):
        with open(self.log.name, errors="replace") as f:
            return f.read()

    def wait_for(self, pattern, timeout=START_TIMEOUT_S):
        """The first match of `pattern` in the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not print {pattern!r} "
                           f"(exit {self.proc.poll()}); output:\n"
                           f"{self.output()[-4000:]}")

    def kill9(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def create_key(data_dir, tenant):
    """`videogen-server keys create`: its JSON (key, webhook_secret, ...)."""
    p = subprocess.run(
        [required_env("VIDEOGEN_SERVER_BIN"), "keys", "create",
         f"--tenant={tenant}", "--store=sqlite", f"--data_dir={data_dir}"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"keys create failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout)


def start_sim(*flags, key="wh-upstream-key"):
    sim = Process([required_env("VIDEOGEN_SIM_BIN"), "--listen=127.0.0.1:0",
                   f"--key={key}", *flags], name="sim")
    url = sim.wait_for(r"listening on (http://127\.0\.0\.1:\d+)")[1]
    return sim, url


class Server:
    """videogen-server on a free port, restartable on the same data_dir."""

    def __init__(self, data_dir, flags, upstream_key="wh-upstream-key"):
        self.data_dir = data_dir
        self.flags = list(flags)
        self.upstream_key = upstream_key
        self.proc = None
        self.address = None
        self.start()

    def start(self):
        self.proc = Process(
            [required_env("VIDEOGEN_SERVER_BIN"), "--listen=127.0.0.1:0",
             "--store=sqlite", f"--data_dir={self.data_dir}", *self.flags],
            env={"AIMLAPI_KEY": self.upstream_key}, name="server")
        line = self.proc.wait_for(r'.*"event":\s*"server_listening".*')[0]
        self.address = json.loads(line)["address"]

    def kill9(self):
        self.proc.kill9()

    def stop(self):
        if self.proc is not None:
            self.proc.stop()


class Client:
    """A gRPC channel with the API key attached to every call."""

    def __init__(self, address, key=None):
        import grpc
        pb, pb_grpc = stubs()
        self.pb = pb
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.VideoGenerationStub(self.channel)
        self.metadata = [("authorization", f"Bearer {key}")] if key else []

    def create(self, timeout=30, **request):
        return self.stub.CreateGeneration(
            self.pb.GenerateRequest(**request), timeout=timeout,
            metadata=self.metadata)

    def get(self, generation_id):
        return self.stub.GetGeneration(
            self.pb.GetGenerationRequest(id=generation_id), timeout=30,
            metadata=self.metadata)

    def cancel(self, generation_id):
        return self.stub.CancelGeneration(
            self.pb.CancelGenerationRequest(id=generation_id), timeout=30,
            metadata=self.metadata)

    def wait(self, generation_id, until, timeout=120, what="condition"):
        """Polls GetGeneration until `until(generation)`; returns it."""
        deadline = time.monotonic() + timeout
        g = None
        while time.monotonic() < deadline:
            g = self.get(generation_id)
            if until(g):
                return g
            time.sleep(0.1)
        raise AssertionError(f"{generation_id}: no {what} within {timeout}s; "
                             f"last seen:\n{g}")

    def close(self):
        self.channel.close()


def state_name(pb, state):
    return pb.Generation.State.Name(state)


def hmac_verify(secret, headers, body, tolerance_s=300):
    """Standard Webhooks v1 with Python's hmac only: the key is the secret
    after "whsec_", base64-decoded; the signed content is id.timestamp.body.
    Returns None when authentic, else why not."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures):
        return "missing webhook-* headers"
    if abs(time.time() - int(timestamp)) > tolerance_s:
        return f"timestamp {timestamp} outside the tolerance"
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(
        key, f"{msg_id}.{timestamp}.".encode() + body,
        hashlib.sha256).digest()).decode()
    for entry in signatures.split():
        version, _, value = entry.partition(",")
        if version == "v1" and hmac.compare_digest(value, expected):
            return None
    return f"no v1 signature matches ({signatures})"


class Delivery:
    """One POST the receiver got."""

    def __init__(self, headers, body, received):
        self.headers = headers
        self.body = body
        self.received = received  # time.time()
        self.event = None
        try:
            self.event = json.loads(body)
        except ValueError:
            pass

    @property
    def webhook_id(self):
        return self.headers.get("webhook-id", "")

    @property
    def generation(self):
        return (self.event or {}).get("generation", {})


class Receiver:
    """A webhook receiver on a loopback port, in this process. `answer(d,
    n)` picks the HTTP status (or a (status, headers) pair) for delivery
    `d`, the n-th POST (1-based) with its webhook-id; default 204. Every POST is recorded with its signature
    check (`verify_error`, None when authentic) in `deliveries`."""

    def __init__(self, secret, answer=None, port=0):
        self.secret = secret
        self.answer = answer or (lambda d, n: 204)
        self.lock = threading.Condition()
        self.deliveries = []
        self.per_id = {}
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                d = Delivery({k.lower(): v for k, v in self.headers.items()},
                             body, time.time())
                d.path = self.path
                d.verify_error = hmac_verify(receiver.secret, d.headers, body)
                with receiver.lock:
                    n = receiver.per_id.get(d.webhook_id, 0) + 1
                    receiver.per_id[d.webhook_id] = n
                status = receiver.answer(d, n)
                extra = {}
                if isinstance(status, tuple):
                    status, extra = status
                with receiver.lock:
                    d.status = status
                    receiver.deliveries.append(d)
                    receiver.lock.notify_all()
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True
            request_queue_size = 1024

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       daemon=True)
        self.thread.start()

    def wait(self, until, timeout=60, what="deliveries"):
        """Waits until `until(deliveries)` holds; returns a copy."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while not until(self.deliveries):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no {what} within {timeout}s; got "
                        f"{[(d.webhook_id, d.status) for d in self.deliveries]}")
                self.lock.wait(min(left, 0.5))
            return list(self.deliveries)

    def snapshot(self):
        with self.lock:
            return list(self.deliveries)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def server_log_tail(server, n=60):
    if server is None or server.proc is None:
        return ""
    return "\n".join(server.proc.output().splitlines()[-n:])


def rmtree(path):
    shutil.rmtree(path, ignore_errors=True)
