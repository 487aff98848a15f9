#!/usr/bin/env bash
# Polls/s of one AimlApiUpstream loop vs wrk against the same simulator
# endpoint, in the same run. Builds nothing. Prints a markdown table.
# Usage: tests/bench/upstream/run.sh [BUILD_DIR] [upstream_bench flags...]
# e.g.   tests/bench/upstream/run.sh build --seconds=5 --concurrency=64
set -euo pipefail
root=$(cd "$(dirname "$0")/../../.." && pwd)
build=${1:-${BUILD_DIR:-$root/build}}
shift || true
bench=$build/tests/bench/upstream/upstream_bench
sim=$build/server/sim/videogen-sim
if [[ ! -x $bench ]]; then
  echo "missing $bench; build it: cmake --build $build --target upstream_bench" >&2
  exit 2
fi
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 2; }

key=bench-key-$$
url_flag=()
if [[ -x $sim ]]; then
  # A separate sim process, so that CPU per poll isolates the loop.
  port=$(/usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  "$sim" --listen "127.0.0.1:$port" --key "$key" >/dev/null 2>&1 &
  sim_pid=$!
  trap 'kill "$sim_pid" 2>/dev/null || true' EXIT
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$port/sim/stats" && break
    sleep 0.1
  done
  url_flag=(--url="http://127.0.0.1:$port")
fi

echo "nproc $(nproc), load average $(cut -d' ' -f1-3 /proc/loadavg)"
header=true
for threads in 1 2; do
  "$bench" "${url_flag[@]}" --key="$key" --wrk_threads="$threads" \
    --header="$header" "$@"
  header=false
done
