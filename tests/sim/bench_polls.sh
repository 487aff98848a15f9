#!/bin/bash
# Measures how many polls per second videogen-sim serves (keep-alive, wrk).
# Usage: bench_polls.sh PATH/TO/videogen-sim [CONNECTIONS] [SECONDS]
set -euo pipefail
BIN=$1
CONNS=${2:-64}
SECS=${3:-5}
OUT=$(mktemp)
"$BIN" --listen 127.0.0.1:0 --key bench-key --queued_for=0s \
  --generating_for=0s >"$OUT" 2>/dev/null &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$OUT"' EXIT
for _ in $(seq 100); do grep -q listening "$OUT" && break; sleep 0.05; done
BASE=$(grep -o 'http://127.0.0.1:[0-9]*' "$OUT")
ID=$(curl -sS --fail -X POST "$BASE/v2/generate/video/kling/generation" \
  -H 'Authorization: Bearer bench-key' -d '{"prompt":"bench"}' |
  /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
ENC=$(/usr/bin/python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$ID")
echo "polling $ID (completed, legacy shape) with $CONNS connections for ${SECS}s"
wrk -t2 -c"$CONNS" -d"${SECS}s" -H 'Authorization: Bearer bench-key' \
  "$BASE/v2/generate/video/kling/generation?generation_id=$ENC"
curl -sS "$BASE/sim/stats" | /usr/bin/python3 -c \
  'import json,sys; s=json.load(sys.stdin); print("polls counted by the sim:", sum(s["polls_by_id"].values()))'
