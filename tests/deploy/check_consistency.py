#!/usr/bin/python3
"""Checks deploy/ against the server's real flag defaults.

The defaults come from `videogen-server --helpfull`, so a change to a default
in server code (drain grace, heartbeat, ports, keepalive) that the manifests,
the Dockerfile or the Envoy sample no longer fit fails this test.

Modes:
  check_consistency.py --server BIN --root REPO            the checks
  check_consistency.py --server BIN --root REPO --mutations
      the checks must pass on the real defaults and must FAIL on each of a
      few altered defaults (proves the checks can fail)
  check_consistency.py --server BIN --root REPO --live-probes
      runs the server with the Deployment's args and asks the health service
      what the kubelet probes ask, scrapes the annotated metrics path, and
      expects exit 0 after SIGTERM
  check_consistency.py --root REPO --runtime-libs BIN...
      every shared library the binaries load must come from a package that
      the Dockerfile's runtime stage installs (or the base image has)

Only stdlib + python3-yaml (a dependency of Debian's yamllint).
"""

import argparse
import copy
import math
import os
import re
import shlex
import subprocess
import sys

import yaml

SERVICE_NAME = "videogen.v1.VideoGeneration"
SECRET_NAME = "videogen-api-key"
SECRET_KEY = "api-key"
REQUIRED_FLAGS = [
    "listen", "metrics_listen", "data_dir", "store", "drain_grace",
    "heartbeat_interval", "keepalive_time", "keepalive_timeout",
    "keepalive_min_ping_interval", "max_connection_age",
    "max_connection_age_grace", "generation_deadline",
]
OVERLAYS_DIR = "deploy/k8s/overlays"
BASE_DIR = "deploy/k8s/base"


# --- server defaults ---------------------------------------------------------

def require_binary(path):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        sys.exit(f"FAIL {path} is not built (build it first, e.g. "
                 "scripts/dev.sh build)")


def server_help(binary):
    require_binary(binary)
    # absl's --helpfull prints to stdout and exits non-zero; only the text counts.
    proc = subprocess.run([binary, "--helpfull"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, timeout=60, check=False)
    return proc.stdout.decode("utf-8", "replace")


def parse_defaults(text):
    """Flag name -> default (string) from absl --helpfull output."""
    defaults = {}
    pattern = re.compile(
        r"--([A-Za-z0-9_]+) \((.*?)\);\s+default: (\"(?:[^\"]*)\"|[^;]*);",
        re.DOTALL)
    for m in pattern.finditer(text):
        value = m.group(3)
        if value.startswith('"') and value.endswith('"'):
            value = value[1:-1]
        defaults[m.group(1)] = value
    return defaults


_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
          "h": 3600.0}


def duration_seconds(text):
    """absl or Go/Envoy style duration ("1h30m", "500ms", "20s", "0s")."""
    text = str(text).strip()
    if text == "inf":
        return float("inf")
    if re.fullmatch(r"-?\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|ms|h|m|s)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNITS[u] for n, u in parts)


def port_of(address):
    m = re.fullmatch(r"(.*):(\d+)", address or "")
    return int(m.group(2)) if m else None


def host_of(address):
    m = re.fullmatch(r"(.*):(\d+)", address or "")
    return m.group(1).strip("[]") if m else None


def parse_flag_args(args):
    """["--a=1", "--b", "2", "--c"] -> {"a": "1", "b": "2", "c": "true"}."""
    flags, i = {}, 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            if not eq:
                if i + 1 < len(args) and not args[i + 1].startswith("--"):
                    value, i = args[i + 1], i + 1
                else:
                    value = "true"
            flags[name] = value
        i += 1
    return flags


# --- kustomize, just enough ------------------------------------------------

def load_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d]


def merge(base, patch):
    """Strategic-merge-like: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            if value is None:  # strategic merge: `field: null` deletes it
                out.pop(key, None)
            else:
                out[key] = merge(base[key], value) if key in base else value
        return out
    if (isinstance(base, list) and isinstance(patch, list)
            and all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            for i, existing in enumerate(out):
                if existing["name"] == item["name"]:
                    out[i] = merge(existing, item)
                    break
            else:
                out.append(item)
        return out
    return copy.deepcopy(patch)


def render(directory, errors):
    """Resources of a kustomization dir with patches, images, namespace."""
    kfile = os.path.join(directory, "kustomization.yaml")
    if not os.path.isfile(kfile):
        errors.append(f"{directory}: no kustomization.yaml")
        return []
    kust = load_docs(kfile)[0]
    docs = []
    for entry in kust.get("resources", []) + kust.get("components", []):
        path = os.path.normpath(os.path.join(directory, entry))
        if os.path.isdir(path):
            docs += render(path, errors)
        elif os.path.isfile(path):
            docs += load_docs(path)
        else:
            errors.append(f"{kfile}: resource {entry} does not exist")
    for patch in kust.get("patches", []) + [
            {"path": p} for p in kust.get("patchesStrategicMerge", [])]:
        path = os.path.join(directory, patch.get("path", ""))
        if not os.path.isfile(path):
            errors.append(f"{kfile}: patch {patch} is not a file")
            continue
        for p in load_docs(path):
            target = [d for d in docs if d.get("kind") == p.get("kind") and
                      d["metadata"]["name"] == p["metadata"]["name"]]
            if not target:
                errors.append(f"{path}: patches nothing")
            for d in target:
                if p.get("$patch") == "delete":
                    docs.remove(d)
                else:
                    docs[docs.index(d)] = merge(d, p)
    for image in kust.get("images", []):
        for d in docs:
            for c in pod_containers(d):
                if c.get("image", "").split(":")[0] == image["name"]:
                    c["image"] = "%s:%s" % (image.get("newName", image["name"]),
                                            image.get("newTag", "latest"))
    if "namespace" in kust:
        for d in docs:
            if d.get("kind") != "Namespace":
                d.setdefault("metadata", {})["namespace"] = kust["namespace"]
    return docs


def pod_containers(doc):
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return spec.get("containers", [])


def of_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v
                                  for k, v in selector.items())


# --- the checks --------------------------------------------------------------

class Checker:
    def __init__(self, root, defaults, mutate=None):
        self.root = root
        self.defaults = defaults
        self.errors = []
        # mutate(rel, docs): alters a rendered directory in place (the
        # manifest mutations of --mutations).
        self.mutate = mutate

    def fail(self, where, message):
        self.errors.append(f"{where}: {message}")

    def expect(self, ok, where, message):
        if not ok:
            self.fail(where, message)
        return ok

    def dur(self, flag):
        return duration_seconds(self.defaults[flag])

    def run(self):
        missing = [f for f in REQUIRED_FLAGS if f not in self.defaults]
        if missing:
            self.fail("videogen-server --helpfull",
                      "flags missing (or help not parsed): " + ", ".join(missing))
            return self.errors
        self.check_dockerfile()
        renders = [BASE_DIR] + sorted(
            os.path.join(OVERLAYS_DIR, d)
            for d in os.listdir(os.path.join(self.root, OVERLAYS_DIR)))
        for rel in renders:
            docs = render(os.path.join(self.root, rel), self.errors)
            if self.mutate:
                self.mutate(rel, docs)
            self.check_kubernetes(rel, docs)
        self.check_no_secret_values()
        self.check_envoy()
        return self.errors

    # Effective flag values: the args given, else the server's defaults.
    def effective(self, args, where):
        given = parse_flag_args(args)
        for name in given:
            self.expect(name in self.defaults, where,
                        f"--{name} is not a flag of videogen-server")
        values = dict(self.defaults)
        values.update(given)
        return values

    def check_dockerfile(self):
        where = "deploy/Dockerfile"
        text = open(os.path.join(self.root, where), encoding="utf-8").read()
        runtime = text[text.rfind("\nFROM "):]
        cmd = re.search(r"^CMD (\[.*\])$", runtime, re.M)
        entry = re.search(r"^ENTRYPOINT (\[.*\])$", runtime, re.M)
        if not (self.expect(cmd, where, "no JSON-form CMD") and
                self.expect(entry, where, "no JSON-form ENTRYPOINT")):
            return
        self.expect(yaml.safe_load(entry.group(1)) ==
                    ["/usr/local/bin/videogen-server"], where,
                    "ENTRYPOINT must be the server")
        flags = self.effective(yaml.safe_load(cmd.group(1)), where)
        grpc_port = port_of(flags["listen"])
        self.expect(grpc_port == port_of(self.defaults["listen"]), where,
                    f"CMD listens on {grpc_port}, server default port is "
                    f"{port_of(self.defaults['listen'])}")
        self.expect(host_of(flags["listen"]) in ("0.0.0.0", "::"), where,
                    "CMD must listen on all interfaces in a container")
        metrics_port = port_of(flags["metrics_listen"])
        self.expect(metrics_port, where, "CMD must turn on --metrics_listen")
        exposed = {int(p.split("/")[0]) for line in
                   re.findall(r"^EXPOSE (.*)$", runtime, re.M)
                   for p in line.split()}
        self.expect({grpc_port, metrics_port} <= exposed, where,
                    f"EXPOSE {sorted(exposed)} lacks {grpc_port}/{metrics_port}")
        volumes = re.findall(r"^VOLUME (.*)$", runtime, re.M)
        self.expect(any(flags["data_dir"] in v for v in volumes), where,
                    f"data dir {flags['data_dir']} is not a VOLUME")
        user = re.search(r"^USER (\d+)", runtime, re.M)
        self.expect(user and user.group(1) != "0", where,
                    "runtime must run as a numeric non-root USER")
        self.dockerfile_uid = int(user.group(1)) if user else None

    def check_kubernetes(self, rel, docs):
        deployments = of_kind(docs, "Deployment")
        if not self.expect(len(deployments) == 1, rel,
                           "expected exactly one Deployment"):
            return
        dep = deployments[0]
        where = f"{rel} Deployment/{dep['metadata']['name']}"
        spec = dep["spec"]
        pod = spec["template"]["spec"]
        labels = spec["template"]["metadata"].get("labels", {})
        annotations = spec["template"]["metadata"].get("annotations", {})
        self.expect(selects(spec["selector"]["matchLabels"], labels), where,
                    "selector does not match the pod labels")
        container = pod["containers"][0]
        flags = self.effective(container.get("args", []), where)

        # One replica + Recreate while the store is SQLite on an RWO volume.
        if flags["store"] == "sqlite":
            self.expect(spec.get("replicas", 1) == 1, where,
                        "SQLite store: replicas must be 1")
            self.expect(spec.get("strategy", {}).get("type") == "Recreate",
                        where, "SQLite store: strategy must be Recreate")
        elif flags["store"] == "postgres":
            self.check_postgres(where, spec, container, flags)
        else:
            self.fail(where, f"--store={flags['store']} cannot be deployed "
                      "(sqlite for one replica, postgres for several)")

        ports = {p["name"]: p["containerPort"]
                 for p in container.get("ports", [])}
        grpc_port = port_of(flags["listen"])
        self.expect(grpc_port == port_of(self.defaults["listen"]), where,
                    f"gRPC port {grpc_port} is not the server default "
                    f"{port_of(self.defaults['listen'])}")
        self.expect(host_of(flags["listen"]) in ("0.0.0.0", "::"), where,
                    "--listen must bind all interfaces in a pod")
        self.expect(ports.get("grpc") == grpc_port, where,
                    f"containerPort grpc={ports.get('grpc')} != --listen "
                    f"port {grpc_port}")
        metrics_port = port_of(flags["metrics_listen"])
        self.expect(metrics_port is not None, where,
                    "--metrics_listen is off by default; set it for scraping")
        self.expect(ports.get("metrics") == metrics_port, where,
                    f"containerPort metrics={ports.get('metrics')} != "
                    f"--metrics_listen port {metrics_port}")
        if annotations.get("prometheus.io/scrape") == "true":
            self.expect(str(annotations.get("prometheus.io/port")) ==
                        str(metrics_port), where,
                        "prometheus.io/port != metrics port")
            self.expect(annotations.get("prometheus.io/path") == "/metrics",
                        where, "prometheus.io/path must be /metrics")

        self.check_probes(where, container, grpc_port)
        self.check_termination(where, pod, container, flags)
        self.check_security(where, pod, container)
        self.check_volumes(where, pod, container, flags, docs)
        self.check_secret_env(where, container)
        self.check_services(rel, docs, labels, grpc_port, metrics_port)
        self.check_policy_objects(rel, docs, labels, grpc_port, metrics_port,
                                  flags["store"], spec.get("replicas", 1))

    # Several replicas on one PostgreSQL (design.md §6).
    def check_postgres(self, where, spec, container, flags):
        strategy = spec.get("strategy", {})
        self.expect(strategy.get("type", "RollingUpdate") == "RollingUpdate",
                    where, "PostgreSQL store: strategy must be RollingUpdate "
                    "(Recreate stops every replica at once)")
        rolling = strategy.get("rollingUpdate", {})
        self.expect(str(rolling.get("maxUnavailable", "25%")) in ("0", "0%"),
                    where, "PostgreSQL store: rollingUpdate.maxUnavailable "
                    "must be 0 (a rollout must not lower serving capacity)")
        self.expect(str(rolling.get("maxSurge", "25%")) not in ("0", "0%"),
                    where, "rollingUpdate.maxSurge must be above 0 when "
                    "maxUnavailable is 0")
        given = parse_flag_args(container.get("args", []))
        self.expect("database_url" not in given, where,
                    "--database_url in args puts the password in the pod "
                    "spec; set env VIDEOGEN_DATABASE_URL from a Secret")
        env = {e["name"]: e for e in container.get("env", [])}
        url = env.get("VIDEOGEN_DATABASE_URL", {})
        ref = url.get("valueFrom", {}).get("secretKeyRef", {})
        self.expect(ref.get("name") and ref.get("key") and
                    "value" not in url, where,
                    "VIDEOGEN_DATABASE_URL must come from a Secret "
                    "(valueFrom.secretKeyRef), not a literal value")
        self.expect(ref.get("optional") is not True, where,
                    "the database Secret must not be optional")
        # Lease owners must be unique per pod: a shared name would let two
        # replicas renew each other's leases and poll the same generation.
        self.expect("replica_id" not in given, where,
                    "a fixed --replica_id would be shared by every pod")
        owner = (env.get("VIDEOGEN_REPLICA_ID", {}).get("valueFrom", {})
                 .get("fieldRef", {}).get("fieldPath"))
        self.expect(owner == "metadata.name", where,
                    "VIDEOGEN_REPLICA_ID must be the pod name (fieldRef "
                    "metadata.name): each replica needs its own lease owner")
        self.expect(flags["mirror"] in ("none", "s3"), where,
                    f"--mirror={flags['mirror']} keeps videos on one pod's "
                    "disk; with a shared store use --mirror=none or s3")

    def check_probes(self, where, container, grpc_port):
        ready = container.get("readinessProbe", {}).get("grpc")
        live = container.get("livenessProbe", {}).get("grpc")
        if self.expect(ready, where, "readinessProbe must be a grpc probe"):
            self.expect(ready.get("port") == grpc_port, where,
                        f"readiness probe port {ready.get('port')} != {grpc_port}")
            self.expect(ready.get("service") == SERVICE_NAME, where,
                        f"readiness must probe service {SERVICE_NAME}")
        if self.expect(live, where, "livenessProbe must be a grpc probe"):
            self.expect(live.get("port") == grpc_port, where,
                        f"liveness probe port {live.get('port')} != {grpc_port}")
            self.expect(live.get("service", "") == "", where,
                        'liveness must probe the server as a whole (service "")')

    def check_termination(self, where, pod, container, flags):
        drain = duration_seconds(flags["drain_grace"])
        pre_stop = 0.0
        cmd = (container.get("lifecycle", {}).get("preStop", {})
               .get("exec", {}).get("command"))
        sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep")
        if cmd:
            words = cmd if len(cmd) > 1 else shlex.split(cmd[0])
            if len(words) >= 3 and words[1] == "-c":  # ["sh", "-c", "sleep 5"]
                words = shlex.split(words[2])
            names = [os.path.basename(w) for w in words]
            if self.expect("sleep" in names[:-1], where,
                           "preStop exec must be a sleep"):
                pre_stop = duration_seconds(words[names.index("sleep") + 1])
        elif sleep:
            pre_stop = float(sleep["seconds"])
        else:
            self.fail(where, "no preStop hook (endpoint removal needs time)")
        grace = pod.get("terminationGracePeriodSeconds", 30)
        self.expect(grace > drain + pre_stop, where,
                    f"terminationGracePeriodSeconds {grace} must exceed "
                    f"preStop {pre_stop:g}s + --drain_grace {drain:g}s")

    def check_security(self, where, pod, container):
        psc, csc = pod.get("securityContext", {}), container.get(
            "securityContext", {})

        def either(key):
            return csc.get(key, psc.get(key))
        self.expect(either("runAsNonRoot") is True, where, "runAsNonRoot")
        uid = either("runAsUser")
        self.expect(uid == getattr(self, "dockerfile_uid", uid), where,
                    f"runAsUser {uid} != Dockerfile USER")
        self.expect(csc.get("readOnlyRootFilesystem") is True, where,
                    "readOnlyRootFilesystem must be true")
        self.expect(csc.get("allowPrivilegeEscalation") is False, where,
                    "allowPrivilegeEscalation must be false")
        self.expect("ALL" in csc.get("capabilities", {}).get("drop", []),
                    where, "capabilities must drop ALL")
        self.expect((either("seccompProfile") or {}).get("type") ==
                    "RuntimeDefault", where, "seccompProfile RuntimeDefault")

    def check_volumes(self, where, pod, container, flags, docs):
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"]
                  for m in container.get("volumeMounts", [])}
        data = volumes.get(mounts.get(flags["data_dir"]), {})
        claim = data.get("persistentVolumeClaim", {}).get("claimName")
        if flags["store"] == "postgres":
            # Scratch only; the state is in PostgreSQL. A ReadWriteOnce claim
            # would pin every replica to one node.
            self.expect("emptyDir" in data and not claim, where,
                        f"PostgreSQL store: --data_dir {flags['data_dir']} "
                        "must be an emptyDir, not a PVC")
            self.expect(not of_kind(docs, "PersistentVolumeClaim"), where,
                        "PostgreSQL store: no PersistentVolumeClaim needed")
        elif self.expect(claim, where,
                         f"--data_dir {flags['data_dir']} must be a PVC mount"):
            pvcs = [p for p in of_kind(docs, "PersistentVolumeClaim")
                    if p["metadata"]["name"] == claim]
            self.expect(pvcs and "ReadWriteOnce" in pvcs[0]["spec"]
                        ["accessModes"], where,
                        f"PVC {claim} missing or not ReadWriteOnce")
        self.expect("emptyDir" in volumes.get(mounts.get("/tmp"), {}), where,
                    "/tmp must be an emptyDir (read-only root)")

    def check_secret_env(self, where, container):
        env = {e["name"]: e for e in container.get("env", [])}
        ref = (env.get("AIMLAPI_KEY", {}).get("valueFrom", {})
               .get("secretKeyRef", {}))
        self.expect(ref.get("name") == SECRET_NAME and
                    ref.get("key") == SECRET_KEY, where,
                    f"AIMLAPI_KEY must come from secret {SECRET_NAME}/{SECRET_KEY}")
        self.expect("value" not in env.get("AIMLAPI_KEY", {}), where,
                    "AIMLAPI_KEY must not be a literal value")

    def check_services(self, rel, docs, labels, grpc_port, metrics_port):
        services = of_kind(docs, "Service")
        regular = [s for s in services if s["spec"].get("clusterIP") != "None"]
        headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
        self.expect(regular and headless, rel,
                    "need a ClusterIP Service and a headless Service")
        for svc in services:
            where = f"{rel} Service/{svc['metadata']['name']}"
            self.expect(selects(svc["spec"].get("selector"), labels), where,
                        "selector does not match the pod labels")
            ports = {p["name"]: p for p in svc["spec"]["ports"]}
            grpc = ports.get("grpc", {})
            self.expect(grpc.get("appProtocol") == "grpc", where,
                        "port grpc needs appProtocol: grpc")
            self.expect(grpc.get("targetPort") in ("grpc", grpc_port), where,
                        "port grpc must target the container's grpc port")
            self.expect(grpc.get("port") == grpc_port, where,
                        f"port grpc must be {grpc_port}")
        for svc in regular:
            metrics = {p["name"]: p for p in svc["spec"]["ports"]}.get(
                "metrics", {})
            self.expect(metrics.get("port") == metrics_port and
                        metrics.get("targetPort") in ("metrics", metrics_port),
                        f"{rel} Service/{svc['metadata']['name']}",
                        f"port metrics must be {metrics_port}")
        for sm in of_kind(docs, "ServiceMonitor"):
            where = f"{rel} ServiceMonitor/{sm['metadata']['name']}"
            self.expect(any(selects(sm["spec"]["selector"]["matchLabels"],
                                    s["metadata"].get("labels", {}))
                            for s in regular), where, "selects no Service")
            self.expect(any(e.get("port") == "metrics" and
                            e.get("path", "/metrics") == "/metrics"
                            for e in sm["spec"]["endpoints"]), where,
                        "must scrape port metrics at /metrics")

    def check_policy_objects(self, rel, docs, labels, grpc_port, metrics_port,
                             store="sqlite", replicas=1):
        pdbs = of_kind(docs, "PodDisruptionBudget")
        if self.expect(pdbs, rel, "no PodDisruptionBudget"):
            pdb = pdbs[0]["spec"]
            self.expect(selects(pdb["selector"]["matchLabels"], labels), rel,
                        "PDB selects no videogen pod")
            # minAvailable >= replicas would block node drains forever.
            if replicas <= 1:
                self.expect(pdb.get("minAvailable") in (None, 0), rel,
                            "PDB minAvailable blocks drains with one replica")
            else:
                self.check_pdb_replicas(rel, pdb, replicas)
        nps = of_kind(docs, "NetworkPolicy")
        if self.expect(nps, rel, "no NetworkPolicy"):
            np = nps[0]["spec"]
            self.expect(selects(np["podSelector"]["matchLabels"], labels), rel,
                        "NetworkPolicy selects no videogen pod")
            allowed = {p.get("port") for rule in np.get("ingress", [])
                       for p in rule.get("ports", [])}
            self.expect({grpc_port, metrics_port} <= allowed, rel,
                        f"NetworkPolicy ingress ports {sorted(allowed)} lack "
                        f"{grpc_port}/{metrics_port}")
            if store == "postgres":
                egress = {p.get("port") for rule in np.get("egress", [])
                          for p in rule.get("ports", [])}
                self.expect(5432 in egress, rel,
                            "NetworkPolicy egress must allow PostgreSQL "
                            "(5432)")

    def check_pdb_replicas(self, rel, pdb, replicas):
        """Several replicas: drains go one pod at a time, never all."""
        def count(value):
            value = str(value)
            if value.endswith("%"):  # Kubernetes rounds percentages up
                return math.ceil(replicas * float(value[:-1]) / 100)
            return int(value)
        if "maxUnavailable" in pdb:
            n = count(pdb["maxUnavailable"])
            self.expect(1 <= n < replicas, rel,
                        f"PDB maxUnavailable {pdb['maxUnavailable']} must let "
                        f"1..{replicas - 1} of {replicas} replicas go")
        elif "minAvailable" in pdb:
            n = count(pdb["minAvailable"])
            self.expect(1 <= n < replicas, rel,
                        f"PDB minAvailable {pdb['minAvailable']} must keep "
                        f"1..{replicas - 1} of {replicas} replicas")
        else:
            self.fail(rel, "PDB sets neither maxUnavailable nor minAvailable")

    def check_no_secret_values(self):
        for dirpath, _, files in os.walk(os.path.join(self.root, "deploy")):
            for name in files:
                if not name.endswith((".yaml", ".yml")):
                    continue
                path = os.path.join(dirpath, name)
                for doc in load_docs(path):
                    if doc.get("kind") == "Secret" and (
                            doc.get("data") or doc.get("stringData")):
                        self.fail(os.path.relpath(path, self.root),
                                  "a Secret with a value is committed")

    def check_envoy(self):
        where = "deploy/envoy.yaml"
        cfg = load_docs(os.path.join(self.root, where))[0]
        heartbeat = self.dur("heartbeat_interval")
        res = cfg["static_resources"]
        clusters = {c["name"]: c for c in res["clusters"]}
        cluster = clusters.get("videogen")
        if not self.expect(cluster, where, "no cluster videogen"):
            return
        ports = [e["endpoint"]["address"]["socket_address"]["port_value"]
                 for group in cluster["load_assignment"]["endpoints"]
                 for e in group["lb_endpoints"]]
        default_port = port_of(self.defaults["listen"])
        self.expect(ports and all(p == default_port for p in ports), where,
                    f"cluster ports {ports} != server port {default_port}")
        http2 = (cluster.get("typed_extension_protocol_options", {})
                 .get("envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                      {}).get("explicit_http_config", {})
                 .get("http2_protocol_options"))
        if self.expect(http2 is not None, where, "cluster must speak HTTP/2"):
            ping = (http2 or {}).get("connection_keepalive", {}).get("interval")
            if ping is not None:
                self.expect(duration_seconds(ping) >=
                            self.dur("keepalive_min_ping_interval"), where,
                            f"keepalive interval {ping} is below the server's "
                            f"--keepalive_min_ping_interval "
                            f"{self.defaults['keepalive_min_ping_interval']} "
                            "(too_many_pings GOAWAY)")
        hcs = [h.get("grpc_health_check", {}).get("service_name")
               for h in cluster.get("health_checks", [])]
        self.expect(SERVICE_NAME in hcs, where,
                    f"needs a grpc_health_check on {SERVICE_NAME}")

        for listener in res["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    if f["name"].endswith("http_connection_manager"):
                        self.check_hcm(where, f["typed_config"], heartbeat)

    def check_hcm(self, where, hcm, heartbeat):
        idle = duration_seconds(hcm.get("stream_idle_timeout", "300s"))
        self.expect(idle == 0 or idle > heartbeat, where,
                    f"stream_idle_timeout {idle:g}s must exceed the heartbeat "
                    f"{heartbeat:g}s")
        filters = [f["name"] for f in hcm.get("http_filters", [])]
        self.expect(filters and filters[-1] == "envoy.filters.http.router",
                    where, "router must be the last http filter")
        for needed in ("envoy.filters.http.grpc_web", "envoy.filters.http.cors"):
            self.expect(needed in filters, where, f"missing filter {needed}")
        deadline = self.dur("generation_deadline")
        for vh in hcm["route_config"]["virtual_hosts"]:
            cors = vh.get("typed_per_filter_config", {}).get(
                "envoy.filters.http.cors", {})
            allow = {h.strip() for h in cors.get("allow_headers", "").split(",")}
            expose = {h.strip() for h in cors.get("expose_headers", "").split(",")}
            self.expect({"content-type", "x-grpc-web", "x-user-agent",
                         "grpc-timeout"} <= allow, where,
                        "CORS allow_headers lack gRPC-Web headers")
            self.expect({"grpc-status", "grpc-message"} <= expose, where,
                        "CORS expose_headers lack grpc-status/grpc-message")
            for route in vh["routes"]:
                action = route.get("route", {})
                self.expect(duration_seconds(action.get("timeout", "15s")) == 0,
                            where, "route timeout must be 0s for streams")
                ridle = action.get("idle_timeout")
                if ridle is not None:
                    r = duration_seconds(ridle)
                    self.expect(r == 0 or r > heartbeat, where,
                                f"route idle_timeout {ridle} must exceed the "
                                f"heartbeat {heartbeat:g}s")
                msd = action.get("max_stream_duration", {}).get(
                    "max_stream_duration")
                if msd is not None:
                    m = duration_seconds(msd)
                    self.expect(m == 0 or m > deadline, where,
                                f"max_stream_duration {msd} would cut streams "
                                "before --generation_deadline")


# --- runtime libraries -------------------------------------------------------

def dockerfile_runtime_packages(root):
    text = open(os.path.join(root, "deploy/Dockerfile"), encoding="utf-8").read()
    runtime = text[text.rfind("\nFROM "):]
    m = re.search(r"apt-get install (.*?)&&", runtime, re.S)
    words = m.group(1).replace("\\", " ").split() if m else []
    return [w for w in words if not w.startswith("-")]


def installed_packages():
    out = subprocess.run(
        ["dpkg-query", "-W", "-f",
         "${Package}\t${Status}\t${Essential}\t${Priority}\t${Depends}, "
         "${Pre-Depends}\t${Provides}\n"],
        stdout=subprocess.PIPE, check=True).stdout.decode()
    db, provides = {}, {}
    for line in out.splitlines():
        name, status, essential, priority, depends, prov = line.split("\t")
        if "installed" not in status.split():
            continue
        alts = []
        for group in depends.split(","):
            names = [re.sub(r"[ (].*|:.*", "", a.strip())
                     for a in group.split("|") if a.strip()]
            if names:
                alts.append(names)
        db[name] = {"deps": alts,
                    "base": essential == "yes" or priority == "required"}
        for p in prov.split(","):
            p = re.sub(r"[ (].*", "", p.strip())
            if p:
                provides.setdefault(p, []).append(name)
    return db, provides


def closure(start, db, provides):
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        for real in [name] + provides.get(name, []):
            if real in db and real not in seen:
                seen.add(real)
                for alts in db[real]["deps"]:
                    todo.extend(alts)
    return seen


def owners(paths):
    """path -> Debian package, read once from dpkg's file lists."""
    variants = {}
    for path in paths:
        for p in {path, os.path.realpath(path)}:
            for v in (p, p[4:] if p.startswith("/usr/") else "/usr" + p):
                variants.setdefault(v, set()).add(path)
    found = {}
    info = "/var/lib/dpkg/info"
    for name in os.listdir(info):
        if not name.endswith(".list"):
            continue
        package = name[:-5].split(":")[0]
        with open(os.path.join(info, name), encoding="utf-8",
                  errors="replace") as f:
            for line in f:
                for path in variants.get(line.rstrip("\n"), ()):
                    found.setdefault(path, package)
    return found


def check_runtime_libs(root, binaries):
    errors = []
    wanted = dockerfile_runtime_packages(root)
    if not wanted:
        return ["deploy/Dockerfile: no apt-get install in the runtime stage"]
    db, provides = installed_packages()
    base = {n for n, info in db.items() if info["base"]}
    have = closure(wanted, db, provides) | closure(base, db, provides)
    for name in wanted:
        if name not in db:
            errors.append(f"deploy/Dockerfile: runtime package {name} is not "
                          "a Debian package installed here (misspelt?)")
    needed = []  # (binary, lib, path)
    for binary in binaries:
        require_binary(binary)
        out = subprocess.run(["ldd", binary], stdout=subprocess.PIPE,
                             check=True).stdout.decode()
        for lib, path in re.findall(r"^\s*(\S+) => (\S+)", out, re.M):
            if re.match(r"lib(asan|ubsan|tsan|lsan)\.so", lib):
                continue  # sanitizer builds are never shipped in the image
            if path == "not":
                errors.append(f"{binary}: {lib} not found on this machine")
            else:
                needed.append((binary, lib, path))
    owner = owners({path for _, _, path in needed})
    for binary, lib, path in needed:
        pkg = owner.get(path)
        if pkg is None:
            errors.append(f"{binary}: {path} belongs to no package "
                          "(a local build? the image cannot have it)")
        elif pkg not in have:
            errors.append(f"deploy/Dockerfile: runtime stage lacks {pkg} "
                          f"(for {lib} of {os.path.basename(binary)})")
    # Keep the image lean: each listed library package must be loaded by
    # some binary (ca-certificates is data, for HTTPS to the upstream).
    used = {owner.get(path) for _, _, path in needed}
    for name in wanted:
        if name != "ca-certificates" and name in db and name not in used:
            errors.append(f"deploy/Dockerfile: runtime package {name} is "
                          "loaded by no binary; drop it")
    for binary in binaries:
        libs = sum(1 for b, _, _ in needed if b == binary)
        print(f"{os.path.basename(binary)}: {libs} shared libraries checked")
    return errors


# --- the manifests' probes against a live server -------------------------------

def free_port():
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def health_status(port, service):
    """grpc.health.v1.Health/Check with hand-encoded messages (no stubs)."""
    import grpc
    assert len(service) < 128  # one-byte length prefix
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check")
        reply = check(request, timeout=2)
    # HealthCheckResponse{status = 1}: 1 SERVING, 2 NOT_SERVING.
    return {b"\x08\x01": "SERVING", b"\x08\x02": "NOT_SERVING"}.get(
        reply, repr(reply))


def check_live_probes(root, binary):
    """Runs the server with the Deployment's args (loopback ports, a temp data
    dir, the simulator) and asks it what the kubelet probes would ask."""
    import tempfile
    import time
    import urllib.request
    require_binary(binary)
    errors = []
    docs = render(os.path.join(root, BASE_DIR), errors)
    container = pod_containers(of_kind(docs, "Deployment")[0])[0]
    probes = {kind: container[kind]["grpc"].get("service", "")
              for kind in ("readinessProbe", "livenessProbe")}
    path = (of_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]
            ["annotations"]["prometheus.io/path"])
    grpc_port, metrics_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as data:
        args = []
        for arg in container["args"]:
            name = arg[2:].partition("=")[0]
            args.append({"listen": f"--listen=127.0.0.1:{grpc_port}",
                         "metrics_listen": f"--metrics_listen=127.0.0.1:{metrics_port}",
                         "data_dir": f"--data_dir={data}"}.get(name, arg))
        env = {k: v for k, v in os.environ.items() if k != "AIMLAPI_KEY"}
        proc = subprocess.Popen([binary, "--simulate"] + args, env=env,
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.time() + 30
            while True:
                try:
                    health_status(grpc_port, "")
                    break
                except Exception:  # not listening yet
                    if time.time() > deadline or proc.poll() is not None:
                        errors.append("server did not come up with the "
                                      f"Deployment's args {args}")
                        return errors
                    time.sleep(0.2)
            import grpc
            for kind, service in probes.items():
                try:
                    status = health_status(grpc_port, service)
                except grpc.RpcError as e:  # NOT_FOUND: unknown service name
                    status = e.code().name
                print(f"{kind} grpc service {service!r}: {status}")
                if status != "SERVING":
                    errors.append(f"{kind} asks for service {service!r}: "
                                  f"{status}")
            url = f"http://127.0.0.1:{metrics_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as reply:
                body = reply.read().decode()
            print(f"GET {path}: {reply.status}, {len(body)} bytes")
            if reply.status != 200 or "videogen_" not in body:
                errors.append(f"{url} is not the videogen metrics page")
            proc.send_signal(15)
            grace = duration_seconds(parse_defaults(server_help(binary))
                                     ["drain_grace"])
            code = proc.wait(timeout=grace + 10)
            print(f"SIGTERM: exit {code}")
            if code != 0:
                errors.append(f"SIGTERM drain exited {code}, not 0")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return errors


# --- main ----------------------------------------------------------------------

MUTATIONS = [
    ("drain_grace", "60s"),                  # grace period too short
    ("heartbeat_interval", "10m"),           # above the proxy idle timeouts
    ("listen", "127.0.0.1:50052"),           # ports no longer match
    ("keepalive_min_ping_interval", "1m"),   # Envoy pings would be refused
    ("metrics_listen", None),                # flag renamed or removed
    ("log_format", None),                    # manifests pass an unknown flag
]


# Manifest mutations: each breaks one rule in a rendered directory; the
# checks must notice every one. The SQLite ones prove the PostgreSQL rules
# did not weaken the one-replica rules.
POSTGRES_OVERLAY = os.path.join(OVERLAYS_DIR, "postgres")


def _deployment(docs):
    return of_kind(docs, "Deployment")[0]


def _container(docs):
    return pod_containers(_deployment(docs))[0]


def _env(docs, name):
    return [e for e in _container(docs).get("env", []) if e["name"] == name]


def _set_literal_url(docs):
    for e in _env(docs, "VIDEOGEN_DATABASE_URL"):
        e.pop("valueFrom", None)
        e["value"] = "postgresql://videogen:secret@db/videogen"


def _add_arg(arg):
    return lambda docs: _container(docs)["args"].append(arg)


def _set_store(store):
    def apply(docs):
        args = _container(docs)["args"]
        args[:] = [a for a in args if not a.startswith("--store=")]
        args.append(f"--store={store}")
    return apply


def _drop_replica_env(docs):
    c = _container(docs)
    c["env"] = [e for e in c["env"] if e["name"] != "VIDEOGEN_REPLICA_ID"]


def _set(path, value):
    """docs -> sets Deployment field at `path` (keys) to `value`."""
    def apply(docs):
        node = _deployment(docs)
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return apply


def _data_on_pvc(docs):
    for v in _deployment(docs)["spec"]["template"]["spec"]["volumes"]:
        if v["name"] == "data":
            v.pop("emptyDir", None)
            v["persistentVolumeClaim"] = {"claimName": "videogen-data"}


def _pdb_all(docs):
    of_kind(docs, "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] = 3


def _no_db_egress(docs):
    spec = of_kind(docs, "NetworkPolicy")[0]["spec"]
    spec["egress"] = [r for r in spec["egress"]
                      if 5432 not in {p.get("port") for p in r.get("ports", [])}]


MANIFEST_MUTATIONS = [
    (POSTGRES_OVERLAY, "VIDEOGEN_DATABASE_URL as a literal value",
     _set_literal_url),
    (POSTGRES_OVERLAY, "--database_url in args",
     _add_arg("--database_url=postgresql://db/videogen")),
    (POSTGRES_OVERLAY, "--mirror=local", _add_arg("--mirror=local")),
    (POSTGRES_OVERLAY, "a fixed --replica_id", _add_arg("--replica_id=a")),
    (POSTGRES_OVERLAY, "no VIDEOGEN_REPLICA_ID", _drop_replica_env),
    (POSTGRES_OVERLAY, "rollingUpdate.maxUnavailable 1",
     _set(["spec", "strategy", "rollingUpdate", "maxUnavailable"], 1)),
    (POSTGRES_OVERLAY, "strategy Recreate",
     _set(["spec", "strategy"], {"type": "Recreate"})),
    (POSTGRES_OVERLAY, "data dir on a PVC", _data_on_pvc),
    (POSTGRES_OVERLAY, "PDB maxUnavailable 3", _pdb_all),
    (POSTGRES_OVERLAY, "no egress to PostgreSQL", _no_db_egress),
    (POSTGRES_OVERLAY, "3 replicas on --store=sqlite", _set_store("sqlite")),
    (POSTGRES_OVERLAY, "--store=memory", _set_store("memory")),
    (BASE_DIR, "3 replicas on SQLite", _set(["spec", "replicas"], 3)),
    (BASE_DIR, "SQLite with RollingUpdate",
     _set(["spec", "strategy"], {"type": "RollingUpdate"})),
]


def run_manifest_mutations(root, defaults):
    caught = 0
    for target, label, fn in MANIFEST_MUTATIONS:
        def mutate(rel, docs, target=target, fn=fn):
            if rel == target:
                fn(docs)
        found = Checker(root, defaults, mutate).run()
        if found:
            caught += 1
            print(f"caught  {target}: {label}: {found[0]}")
        else:
            print(f"MISSED  {target}: {label}: the checks did not notice")
    print(f"manifest mutations: {caught} of {len(MANIFEST_MUTATIONS)} caught")
    return caught == len(MANIFEST_MUTATIONS)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--server")
    parser.add_argument("--mutations", action="store_true")
    parser.add_argument("--runtime-libs", nargs="+", metavar="BIN")
    parser.add_argument("--live-probes", action="store_true")
    args = parser.parse_args()

    if args.live_probes:
        errors = check_live_probes(args.root, args.server)
        for e in errors:
            print("FAIL", e)
        print("live probes:", "FAILED" if errors else "ok")
        return 1 if errors else 0

    if args.runtime_libs:
        errors = check_runtime_libs(args.root, args.runtime_libs)
        for e in errors:
            print("FAIL", e)
        print(f"{len(args.runtime_libs)} binaries, {len(errors)} problems")
        return 1 if errors else 0

    if not args.server:
        parser.error("--server is required")
    defaults = parse_defaults(server_help(args.server))
    print(f"videogen-server --helpfull: {len(defaults)} flags with defaults")
    errors = Checker(args.root, defaults).run()
    for e in errors:
        print("FAIL", e)
    if errors or not args.mutations:
        print("consistency:", "FAILED" if errors else "ok")
        return 1 if errors else 0

    caught = 0
    for flag, value in MUTATIONS:
        altered = dict(defaults)
        if value is None:
            del altered[flag]
        else:
            altered[flag] = value
        found = Checker(args.root, altered).run()
        label = f"--{flag}={value}" if value is not None else f"no --{flag}"
        if found:
            caught += 1
            print(f"caught  {label}: {found[0]}")
        else:
            print(f"MISSED  {label}: the checks did not notice")
    print(f"mutations: {caught} of {len(MUTATIONS)} caught")
    manifests_ok = run_manifest_mutations(args.root, defaults)
    return 0 if caught == len(MUTATIONS) and manifests_ok else 1


if __name__ == "__main__":
    sys.exit(main())
