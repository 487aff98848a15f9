"""Test harness: generates the Python stubs into a temp dir and runs the real
videogen-sim and videogen-server binaries on free loopback ports.

Binaries come from the environment (set by ctest): VIDEOGEN_SERVER_BIN,
VIDEOGEN_SIM_BIN. A missing one is an error, never a skip.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
PROTO_DIR = os.path.join(REPO, "proto")
GRPC_PYTHON_PLUGIN = os.environ.get("GRPC_PYTHON_PLUGIN",
                                    "/usr/bin/grpc_python_plugin")
START_TIMEOUT_S = 30


def required_env(name):
    value = os.environ.get(name, "")
    if not value or not os.access(value, os.X_OK):
        raise RuntimeError(f"{name} must name an executable (got {value!r})")
    return value


def generate_stubs():
    """Runs protoc and puts the output first on sys.path."""
    out = tempfile.mkdtemp(prefix="videogen-py-stubs-")
    subprocess.run(
        ["protoc", "-I", PROTO_DIR, f"--python_out={out}", f"--grpc_out={out}",
         f"--plugin=protoc-gen-grpc={GRPC_PYTHON_PLUGIN}",
         os.path.join(PROTO_DIR, "videogen", "v1", "video_generation.proto")],
        check=True)
    sys.path.insert(0, out)
    return out


class Process:
    """A child process whose stdout and stderr go to temp files."""

    def __init__(self, argv, env=None):
        self.out = tempfile.NamedTemporaryFile(prefix="videogen-out-", delete=False)
        self.err = tempfile.NamedTemporaryFile(prefix="videogen-err-", delete=False)
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err,
                                     env={**os.environ, **(env or {})})

    def output(self):
        with open(self.out.name, errors="replace") as o, \
                open(self.err.name, errors="replace") as e:
            return o.read() + e.read()

    def wait_for(self, pattern):
        """Returns the first match of `pattern` in the output."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            m = re.search(pattern, self.output())
            if m:
                return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = self.output()
        self.stop()
        raise RuntimeError(f"{self.argv[0]} did not print {pattern!r}; "
                           f"output:\n{output}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.out, self.err):
            f.close()
            os.unlink(f.name)


def create_key(server_bin, data_dir, tenant):
    """`videogen-server keys create` against the server's store: the JSON
    object it prints (key, key_id, webhook_secret, ...)."""
    p = subprocess.run(
        [server_bin, "keys", "create", f"--tenant={tenant}", "--store=sqlite",
         f"--data_dir={data_dir}"],
        capture_output=True, text=True, timeout=START_TIMEOUT_S)
    if p.returncode != 0:
        raise RuntimeError(f"keys create failed ({p.returncode}): {p.stderr}")
    return json.loads(p.stdout)


class Stack:
    """videogen-sim plus a videogen-server (API keys on, the default) that
    polls it. `key` belongs to tenant "polyglot", `other_key` to "other".
    `sim_flags` go to videogen-sim, e.g. ["--error_rate=1"] for a stack whose
    every job ends in an upstream task error."""

    def __init__(self, sim_flags=()):
        upstream_key = "polyglot-upstream-key"
        server_bin = required_env("VIDEOGEN_SERVER_BIN")
        self.data_dir = tempfile.mkdtemp(prefix="videogen-polyglot-")
        self.key = create_key(server_bin, self.data_dir, "polyglot")["key"]
        self.other_key = create_key(server_bin, self.data_dir, "other")["key"]
        self.sim = Process([required_env("VIDEOGEN_SIM_BIN"),
                            "--listen=127.0.0.1:0", f"--key={upstream_key}",
                            "--queued_for=300ms", "--generating_for=600ms",
                            *sim_flags])
        sim_url = self.sim.wait_for(r"listening on (http://127\.0\.0\.1:\d+)")[1]
        self.server = Process(
            [server_bin, "--listen=127.0.0.1:0", f"--upstream_url={sim_url}",
             "--store=sqlite", f"--data_dir={self.data_dir}",
             "--poll_initial_delay=100ms", "--poll_interval=150ms"],
            env={"AIMLAPI_KEY": upstream_key})
        try:
            line = self.server.wait_for(r'.*"event":\s*"server_listening".*')[0]
        except BaseException:
            self.sim.stop()
            shutil.rmtree(self.data_dir, ignore_errors=True)
            raise
        self.address = json.loads(line)["address"]

    def stop(self):
        self.server.stop()
        self.sim.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
