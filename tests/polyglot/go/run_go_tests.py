#!/usr/bin/python3
"""Builds the Go client (tests/polyglot/go/src/videogen_example) from
Debian's Go toolchain in GOPATH mode, with stubs generated from proto/ at
test time, and runs its tests against the real videogen-server on its
in-process simulator (--simulate).

Two servers run, each with its own SQLite store and API key: one whose jobs
complete, and one whose jobs all fail (--sim_error_rate=1), for the FAILED
generation that must still end its stream OK.

Usage: run_go_tests.py [--compile-only]
Environment: VIDEOGEN_SERVER_BIN (required unless --compile-only), GOCACHE
(optional: a build cache kept between runs). Missing tools are an error,
never a skip. Nothing is downloaded: GOPROXY=off, GO111MODULE=off.
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
PROTO = os.path.join(REPO, "proto")
DEBIAN_GOPATH = "/usr/share/gocode"
START_TIMEOUT_S = 30
TOOLS = ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"]
APT_HINT = ("apt-get install golang-go protobuf-compiler protoc-gen-go "
            "protoc-gen-go-grpc golang-google-grpc-dev "
            "golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev")


def run(argv, env=None, cwd=None):
    print("+", " ".join(argv), flush=True)
    subprocess.run(argv, env=env, cwd=cwd, check=True)


def go_env(tmp):
    env = dict(os.environ)
    env.update({
        "GOPATH": os.path.join(tmp, "gopath") + os.pathsep + DEBIAN_GOPATH,
        "GO111MODULE": "off",
        "GOPROXY": "off",
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        "CGO_ENABLED": "0",
    })
    env.setdefault("GOCACHE", os.path.join(tmp, "gocache"))
    return env


def build(tmp):
    """Generates the stubs and compiles the example and its test binary."""
    src = os.path.join(tmp, "gopath", "src")
    os.makedirs(src)
    # go_package is github.com/videogen/videogen/gen/go/videogen/v1: the
    # default output paths put the stubs at that import path under src/.
    run(["protoc", "-I", PROTO, f"--go_out={src}", f"--go-grpc_out={src}",
         os.path.join(PROTO, "videogen", "v1", "video_generation.proto")])
    shutil.copytree(os.path.join(HERE, "src", "videogen_example"),
                    os.path.join(src, "videogen_example"))
    env = go_env(tmp)
    run(["go", "version"], env=env)
    run(["go", "vet", "videogen_example"], env=env, cwd=src)
    example = os.path.join(tmp, "videogen_example")
    tests = os.path.join(tmp, "videogen_example.test")
    run(["go", "build", "-o", example, "videogen_example"], env=env, cwd=src)
    run(["go", "test", "-c", "-o", tests, "videogen_example"], env=env,
        cwd=src)
    return example, tests


class Server:
    """videogen-server --simulate with its own data dir and API key."""

    def __init__(self, binary, data_dir, extra_flags):
        self.log_path = data_dir + ".log"
        os.makedirs(data_dir)
        store = ["--store=sqlite", f"--data_dir={data_dir}"]
        key = subprocess.run(
            [binary, "keys", "create", "--tenant=polyglot-go"] + store,
            check=True, capture_output=True, text=True).stdout
        self.key = json.loads(key)["key"]
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [binary, "--simulate", "--listen=127.0.0.1:0",
             "--sim_queued_for=300ms", "--sim_generating_for=600ms",
             "--poll_initial_delay=100ms", "--poll_interval=150ms",
             "--log_format=json"] + store + extra_flags,
            stdout=self.log, stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "AIMLAPI_KEY"})
        self.address = self._wait_listening()

    def output(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def _wait_listening(self):
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            for line in self.output().splitlines():
                if re.search(r'"event":\s*"server_listening"', line):
                    return json.loads(line)["address"]
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("videogen-server did not start; output:\n"
                           + self.output())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def main(argv):
    compile_only = "--compile-only" in argv
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        print(f"missing {', '.join(missing)}: {APT_HINT}", file=sys.stderr)
        return 1
    if not os.path.isdir(os.path.join(DEBIAN_GOPATH, "src",
                                      "google.golang.org", "grpc")):
        print(f"grpc-go is not in {DEBIAN_GOPATH}: {APT_HINT}",
              file=sys.stderr)
        return 1
    # grpc-go 1.33 encodes through github.com/golang/protobuf. Its 1.3
    # package (golang-github-golang-protobuf-1-3-dev, which apt may pick for
    # grpc) cannot handle messages from today's protoc-gen-go (it panics
    # with "protobuf tag not enough fields"); 1.4+ is built on APIv2.
    if not os.path.exists(os.path.join(DEBIAN_GOPATH, "src", "github.com",
                                       "golang", "protobuf", "proto",
                                       "registry.go")):
        print("github.com/golang/protobuf in /usr/share/gocode is older than "
              "1.4: apt-get install golang-github-golang-protobuf-1-5-dev",
              file=sys.stderr)
        return 1
    binary = os.environ.get("VIDEOGEN_SERVER_BIN", "")
    if not compile_only and not os.access(binary, os.X_OK):
        print(f"VIDEOGEN_SERVER_BIN must name an executable (got {binary!r})",
              file=sys.stderr)
        return 1

    tmp = tempfile.mkdtemp(prefix="videogen-go-")
    servers = []
    try:
        example, tests = build(tmp)
        if compile_only:
            print("compiled (not run: --compile-only)")
            return 0
        ok = Server(binary, os.path.join(tmp, "ok"), [])
        servers.append(ok)
        failing = Server(binary, os.path.join(tmp, "failing"),
                         ["--sim_error_rate=1"])
        servers.append(failing)
        env = dict(os.environ)
        env.update({
            "VIDEOGEN_ADDRESS": ok.address,
            "VIDEOGEN_API_KEY": ok.key,
            "VIDEOGEN_FAILING_ADDRESS": failing.address,
            "VIDEOGEN_FAILING_API_KEY": failing.key,
        })
        run([tests, "-test.v", "-test.count=1"], env=env)
        # The example program itself, as a user would run it.
        out = subprocess.run([example], env=env, capture_output=True,
                             text=True, timeout=120)
        print(out.stdout, out.stderr, sep="")
        if out.returncode != 0 or "STATE_COMPLETED" not in out.stdout:
            print("the example program did not complete a generation",
                  file=sys.stderr)
            return 1
        return 0
    except subprocess.CalledProcessError as e:
        print(f"failed: {e}", file=sys.stderr)
        for s in servers:
            print("---- server output ----\n" + s.output()[-4000:],
                  file=sys.stderr)
        return 1
    finally:
        for s in servers:
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
