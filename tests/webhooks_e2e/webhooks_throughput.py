#!/usr/bin/python3
"""Webhook throughput end to end (issue 18): N generations (default 1,000)
complete within a minute on the real videogen-server and videogen-sim, and
every terminal event must reach one healthy receiver exactly once, signed.

Prints a markdown table: deliveries/s and the delay after the terminal state
(receive time minus the generation's update_time, which is when the server
committed the terminal revision together with its outbox entry).

  VIDEOGEN_SERVER_BIN=build/server/videogen-server \\
  VIDEOGEN_SIM_BIN=build/server/sim/videogen-sim \\
  /usr/bin/python3 tests/webhooks_e2e/webhooks_throughput.py [--n=1000]

Exit status 1 when a delivery is missing, duplicated or not authentic, or
when the generations did not complete within --max_completion_span.
"""
import argparse
import concurrent.futures
import datetime
import os
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import webhooks_stack as ws  # noqa: E402


def parse_rfc3339(text):
    """proto3 JSON Timestamp ("...T..:..:..[.fraction]Z") -> unix seconds."""
    base, _, frac = text.rstrip("Z").partition(".")
    t = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(
        tzinfo=datetime.timezone.utc).timestamp()
    return t + (float("0." + frac) if frac else 0.0)


def percentile(sorted_values, p):
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1,
            max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[i]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--queued_for", default="15s")
    ap.add_argument("--generating_for", default="5s")
    ap.add_argument("--poll_interval", default="2s")
    ap.add_argument("--mirror", default="none",
                    help="server --mirror (none: measure webhooks alone)")
    ap.add_argument("--create_concurrency", type=int, default=32)
    ap.add_argument("--max_completion_span", type=float, default=60.0,
                    help="seconds the terminal update_times may spread over")
    ap.add_argument("--settle", type=float, default=5.0,
                    help="seconds to keep listening for duplicates")
    ap.add_argument("--csv", default="",
                    help="also write one row per delivery to this file")
    args = ap.parse_args()
    command = " ".join(shlex.quote(a) for a in
                       ["/usr/bin/python3", os.path.relpath(__file__)]
                       + sys.argv[1:])

    data_dir = tempfile.mkdtemp(prefix="videogen-wh-bench-")
    sim = server = receiver = None
    try:
        record = ws.create_key(data_dir, "bench")
        receiver = ws.Receiver(record["webhook_secret"])
        sim, sim_url = ws.start_sim(f"--queued_for={args.queued_for}",
                                    f"--generating_for={args.generating_for}",
                                    "--logs_rate_limit=100000")
        server = ws.Server(data_dir, [
            f"--upstream_url={sim_url}", f"--mirror={args.mirror}",
            f"--poll_initial_delay={args.queued_for}",
            f"--poll_interval={args.poll_interval}",
            "--upstream_rate_limit=2000", "--max_outstanding_submits=32",
            "--webhook_allow_insecure"])
        client = ws.Client(server.address, record["key"])

        t0 = time.time()
        with concurrent.futures.ThreadPoolExecutor(
                args.create_concurrency) as pool:
            created = list(pool.map(
                lambda i: client.create(prompt=f"bench clip {i}",
                                        request_id=f"bench-{i}",
                                        webhook_url=receiver.url),
                range(args.n)))
        create_s = time.time() - t0
        ids = {g.id for g in created}
        assert len(ids) == args.n, "duplicate generation ids"

        # Everything should be in well before this; the wait only bounds a
        # broken run.
        budget = 60 + 3 * args.max_completion_span
        try:
            receiver.wait(lambda ds: len(ds) >= args.n, timeout=budget,
                          what=f"{args.n} deliveries")
        except AssertionError as e:
            print(f"FAIL: {str(e)[:300]}...", file=sys.stderr)
        time.sleep(args.settle)  # duplicates would arrive now
        got = receiver.snapshot()
        client.close()
    finally:
        for p in (server, sim):
            if p is not None:
                p.stop()
        if receiver is not None:
            receiver.stop()
        ws.rmtree(data_dir)

    errors = []
    per_id = {}
    for d in got:
        per_id[d.webhook_id] = per_id.get(d.webhook_id, 0) + 1
        if d.verify_error:
            errors.append(f"{d.webhook_id}: {d.verify_error}")
    dupes = {k: v for k, v in per_id.items() if v > 1}
    gens = {d.generation.get("id") for d in got}
    missing = ids - gens
    states = {}
    for d in got:
        s = d.generation.get("state", "?")
        states[s] = states.get(s, 0) + 1
    if dupes:
        errors.append(f"{len(dupes)} webhook-ids delivered more than once")
    if missing:
        errors.append(f"{len(missing)} generations never delivered")
    if len(got) != args.n:
        errors.append(f"{len(got)} POSTs for {args.n} generations")
    if any(d.status // 100 != 2 for d in got):
        errors.append("receiver answered non-2xx")

    updates = sorted(parse_rfc3339(d.generation["updateTime"]) for d in got
                     if "updateTime" in d.generation)
    received = sorted(d.received for d in got)
    delays = sorted(d.received - parse_rfc3339(d.generation["updateTime"])
                    for d in got if "updateTime" in d.generation)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write("webhook_id,state,update_time,received,delay_s\n")
            for d in sorted(got, key=lambda d: d.received):
                u = parse_rfc3339(d.generation.get("updateTime",
                                                   "1970-01-01T00:00:00Z"))
                f.write(f"{d.webhook_id},{d.generation.get('state')},"
                        f"{u:.6f},{d.received:.6f},{d.received - u:.6f}\n")
    completion_span = updates[-1] - updates[0] if updates else float("nan")
    delivery_span = received[-1] - received[0] if received else float("nan")
    if not completion_span <= args.max_completion_span:
        errors.append(f"completions spread over {completion_span:.1f} s, "
                      f"more than {args.max_completion_span:.0f} s")
    rate = len(got) / delivery_span if delivery_span > 0 else float("nan")

    print()
    print(f"Command: `{command}`")
    print(f"(server --mirror={args.mirror}, SQLite store, sim queued "
          f"{args.queued_for} + generating {args.generating_for}, poll every "
          f"{args.poll_interval}; {args.n} creates took {create_s:.1f} s)")
    print()
    print("| generations | delivered | duplicates | completions within | "
          "deliveries/s | p50 delay | p99 delay | max delay |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {args.n} | {len(per_id)} | {sum(v - 1 for v in dupes.values())}"
          f" | {completion_span:.1f} s | {rate:.0f}"
          f" | {percentile(delays, 50) * 1000:.0f} ms"
          f" | {percentile(delays, 99) * 1000:.0f} ms"
          f" | {(delays[-1] if delays else float('nan')) * 1000:.0f} ms |")
    print()
    print("terminal states delivered: "
          + ", ".join(f"{k} {v}" for k, v in sorted(states.items())))
    print("deliveries/s = deliveries / (last receive - first receive); "
          "delay = receive time - generation.update_time")
    if errors:
        for e in errors[:20]:
            print("ERROR:", e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
