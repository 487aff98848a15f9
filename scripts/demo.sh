#!/usr/bin/env bash
# videogen demo: a server with the simulated upstream on the embedded SQLite
# store, an API key, one streamed generation, and a download of the finished
# video from the server's own mirror.
#   scripts/demo.sh BUILD_DIR      (scripts/dev.sh demo calls it)
# Exits with the client's exit code (0 when the generation completed).
set -euo pipefail

BUILD_DIR="${1:?usage: scripts/demo.sh BUILD_DIR}"
SERVER="$BUILD_DIR/server/videogen-server"
CLIENT="$BUILD_DIR/client/videogen"

missing=0
for bin in "$SERVER" "$CLIENT"; do
  if [ ! -x "$bin" ]; then
    echo "demo: missing $bin (build the targets videogen-server and videogen first)" >&2
    missing=1
  fi
done
[ "$missing" -eq 0 ] || exit 1

# A port that was free a moment ago.
free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
ADDR="127.0.0.1:$(free_port)"
HTTP_ADDR="127.0.0.1:$(free_port)"
WORK="$(mktemp -d -t videogen-demo.XXXXXX)"
SERVER_PID=""

cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

say() { printf '\033[1m[demo]\033[0m %s\n' "$*" >&2; }

say "creating an API key (videogen-server keys create --tenant=demo)"
"$SERVER" keys create --tenant=demo --data_dir="$WORK/data" >"$WORK/key.json"
VIDEOGEN_API_KEY="$(/usr/bin/python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$WORK/key.json")"
export VIDEOGEN_API_KEY
export VIDEOGEN_HTTP_URL="http://$HTTP_ADDR"

say "starting videogen-server --simulate on $ADDR, HTTP and dashboard on http://$HTTP_ADDR/ (log: $WORK/server.log)"
"$SERVER" --simulate --data_dir="$WORK/data" --listen="$ADDR" \
  --http_listen="$HTTP_ADDR" \
  --sim_queued_for=2s --sim_generating_for=4s \
  --poll_initial_delay=500ms --poll_interval=500ms \
  >"$WORK/server.log" 2>&1 &
SERVER_PID=$!

# Ready once the server answers: NOT_FOUND for an id that does not exist.
ready=0
for _ in $(seq 1 100); do
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    say "the server exited early:"
    tail -n 20 "$WORK/server.log" >&2
    exit 1
  fi
  answer="$("$CLIENT" --server "$ADDR" --timeout 1s get no-such-generation 2>&1 || true)"
  if [[ "$answer" == *NOT_FOUND* ]]; then
    ready=1
    break
  fi
  sleep 0.1
done
if [ "$ready" -ne 1 ]; then
  say "the server did not become ready within 10s:"
  tail -n 20 "$WORK/server.log" >&2
  exit 1
fi

say "videogen generate (streaming until the video is ready)"
set +e
"$CLIENT" --server "$ADDR" generate \
  "a red fox running through fresh snow, cinematic" --duration 5 \
  --label demo=true --output "$WORK/fox.mp4"
code=$?
set -e

if [ "$code" -eq 0 ]; then
  size="$(stat -c %s "$WORK/fox.mp4")"
  say "downloaded $WORK/fox.mp4: $size bytes"
  say "videogen list --label demo=true"
  "$CLIENT" --server "$ADDR" list --label demo=true || code=$?
else
  say "the client exited with $code"
fi

say "stopping the server (SIGTERM)"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""
exit "$code"
