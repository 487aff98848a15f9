#!/bin/bash
# Starts videogen-sim on a free port and drives it with curl like the product
# docs' Python script: POST, then GET with generation_id until completed.
# Usage: sim_curl_test.sh PATH/TO/videogen-sim
set -euo pipefail
BIN=$1
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# Starts the sim with extra flags; sets PID and BASE.
start_sim() {
  local out=$TMP/out.$RANDOM
  "$BIN" --listen 127.0.0.1:0 --key test-key "$@" >"$out" 2>"$out.err" &
  PID=$!
  PIDS+=("$PID")
  for _ in $(seq 100); do
    BASE=$(grep -o 'http://127.0.0.1:[0-9]*' "$out" || true)
    [[ -n $BASE ]] && break
    sleep 0.05
  done
  grep -q '^videogen-sim listening on http://127.0.0.1:[0-9]*$' "$out" ||
    fail "no listening line: $(cat "$out" "$out.err")"
}

json_field() {  # json_field FIELD < body
  /usr/bin/python3 -c 'import json,sys; v=json.load(sys.stdin); exec("for k in sys.argv[1].split(\".\"): v=v[k]"); print(v)' "$1"
}

start_sim --queued_for=200ms --generating_for=300ms
AUTH="Authorization: Bearer test-key"

# --- the docs' loop, on the legacy path
BODY=$(curl -sS --fail -X POST "$BASE/v2/generate/video/kling/generation" \
  -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"model":"klingai/v2-master-text-to-video","prompt":"A cat on a windowsill","duration":"5","aspect_ratio":"16:9"}')
ID=$(json_field id <<<"$BODY")
[[ $ID == *:kling-video/v2/master/text-to-video ]] || fail "legacy id: $ID"
STATUS=""
for _ in $(seq 200); do
  BODY=$(curl -sS --fail -G "$BASE/v2/generate/video/kling/generation" \
    -H "$AUTH" --data-urlencode "generation_id=$ID")
  STATUS=$(json_field status <<<"$BODY")
  echo "status: $STATUS"
  [[ $STATUS == completed ]] && break
  sleep 0.1
done
[[ $STATUS == completed ]] || fail "never completed"
[[ $(json_field id <<<"$BODY") == "$ID" ]] || fail "id changed"
URL=$(json_field video.url <<<"$BODY")
SIZE=$(json_field video.file_size <<<"$BODY")
curl -sS --fail -o "$TMP/v.mp4" "$URL"
[[ $(stat -c %s "$TMP/v.mp4") == "$SIZE" ]] || fail "file size"
[[ $(head -c 8 "$TMP/v.mp4" | tail -c 4) == ftyp ]] || fail "no ftyp box"

# --- the new path
BODY=$(curl -sS --fail -X POST "$BASE/v2/video/generations" -H "$AUTH" \
  -H 'Content-Type: application/json' -d '{"prompt":"x","duration":10}')
ID=$(json_field id <<<"$BODY")
[[ $ID =~ ^[0-9a-f-]{36}$ ]] || fail "new id: $ID"
sleep 0.6
BODY=$(curl -sS --fail "$BASE/v2/video/generations?generation_id=$ID" -H "$AUTH")
[[ $(json_field meta.usage.tokens_used <<<"$BODY") == 240000 ]] || fail "$BODY"

# --- auth and validation
CODE=$(curl -s -o /dev/null -w '%{http_code}' -X POST \
  "$BASE/v2/video/generations" -d '{"prompt":"x"}')
[[ $CODE == 401 ]] || fail "no key gave $CODE"
CODE=$(curl -s -o "$TMP/e" -w '%{http_code}' -X POST -H "$AUTH" \
  "$BASE/v2/video/generations" -d '{"prompt":"x","duration":7}')
[[ $CODE == 400 ]] || fail "bad duration gave $CODE"
[[ $(json_field message <"$TMP/e") == "Body validation error" ]] || fail "400 body"

# --- stats, then a clean stop on SIGTERM
curl -sS --fail "$BASE/sim/stats" | json_field submits | grep -qx 2 || fail "stats"
kill -TERM "$PID"
wait "$PID" || fail "exit code $? after SIGTERM"

# --- repeatable --fault flags
start_sim --queued_for=0s --generating_for=0s --fault=poll:503:every=2 \
  --fault create:429:every=1000
ID=$(curl -sS --fail -X POST "$BASE/v2/video/generations" -H "$AUTH" \
  -d '{"prompt":"x"}' | json_field id)
C1=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$BASE/v2/video/generations?generation_id=$ID")
C2=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$BASE/v2/video/generations?generation_id=$ID")
[[ $C1 == 200 && $C2 == 503 ]] || fail "faults gave $C1 $C2"
kill -INT "$PID"
wait "$PID" || fail "exit code $? after SIGINT"

# --- a create that makes the job and answers 500, found in the usage log
start_sim --queued_for=0s --generating_for=0s \
  --fault=create:create_then_500:every=1 --logs_rate_limit=3
CODE=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "$AUTH" \
  -H 'X-Client-Request-Id: gen-1' "$BASE/v2/video/generations" -d '{"prompt":"x"}')
[[ $CODE == 500 ]] || fail "create_then_500 gave $CODE"
BODY=$(curl -sS --fail -G -H "$AUTH" "$BASE/v2/logs" --data-urlencode period=24h)
/usr/bin/python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; assert len(d)==1 and d[0]["client_request_id"]=="gen-1", d' <<<"$BODY" ||
  fail "logs: $BODY"
ID=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["inference_id"])' <<<"$BODY")
curl -sS --fail -H "$AUTH" "$BASE/v2/video/generations?generation_id=$ID" | json_field status |
  grep -qx completed || fail "logged job not pollable"
curl -s -o /dev/null -H "$AUTH" "$BASE/v2/logs?period=7d"
curl -s -o /dev/null -H "$AUTH" "$BASE/v2/logs?period=7d"
CODE=$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$BASE/v2/logs?period=7d")
[[ $CODE == 429 ]] || fail "4th log request in the window gave $CODE"
kill -TERM "$PID"
wait "$PID" || fail "exit code $? after SIGTERM"

# --- a bad flag is refused
if "$BIN" --fault=poll:teapot >/dev/null 2>&1; then fail "bad --fault accepted"; fi
if "$BIN" --fault=poll:create_then_500 >/dev/null 2>&1; then
  fail "create_then_500 on poll accepted"
fi
echo PASS
