#!/usr/bin/env bash
# Runs the benchmark suite (issue 9) against a built tree and prints the report.
#   scripts/bench.sh BUILD_DIR [videogen-bench flags...]
# Called by `scripts/dev.sh bench`. Writes BUILD_DIR/bench/results.md (plus the
# server/sim logs under BUILD_DIR/bench/logs/). Examples of extra flags:
#   --watchers=1000,10000        skip the 50k run
#   --scenarios=throughput       one scenario only
#   --scenarios=sse --sse_streams=1000
#                                1,000 SSE and 1,000 gRPC streams on one
#                                generation (sse runs by default, at 1000)
set -euo pipefail

BUILD_DIR="${1:?usage: scripts/bench.sh BUILD_DIR [videogen-bench flags...]}"
shift
BUILD_DIR="$(cd "$BUILD_DIR" && pwd)"
BENCH="$BUILD_DIR/tests/bench/videogen/videogen-bench"
OUT="$BUILD_DIR/bench/results.md"

for bin in "$BENCH" "$BUILD_DIR/server/videogen-server" "$BUILD_DIR/server/sim/videogen-sim"; do
  if [ ! -x "$bin" ]; then
    echo "bench: $bin is missing; build first (scripts/dev.sh build)" >&2
    exit 1
  fi
done
mkdir -p "$BUILD_DIR/bench"

# 50k streams need file descriptors in the bench and the server (it inherits
# the limit from the bench). Raise the soft limit as far as the hard one allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

invoked="scripts/dev.sh bench${*:+ $*}"
"$BENCH" --out="$OUT" --invoked_as="$invoked" "$@" >/dev/null
cat "$OUT"
