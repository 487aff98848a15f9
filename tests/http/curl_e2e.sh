#!/usr/bin/env bash
# End-to-end check of the HTTP/JSON API and SSE with curl (design.md §9,
# issue 19): create, get, list with paging and filters, cancel, a watch that
# prints id: 1, 2, 3 ... and ends, a resume with Last-Event-ID that prints
# only the last one, errors with the right status and JSON body, 401 without
# a key, and a Range request on the mirrored video.
#
# Which server (the first that is set):
#   VIDEOGEN_HTTP_URL + VIDEOGEN_API_KEY   a server that is already running
#   VIDEOGEN_SERVER                        videogen-server: started here with
#       --simulate, a fresh SQLite store, a key from `keys create`, and
#       VIDEOGEN_SERVER_ARGS appended; exits 77 (skip) if the binary has no
#       --http_listen flag yet
#   VIDEOGEN_HTTP_FAKE_SERVER              tests/http's http_fake_server
# Exit 0 when every check passes; prints "N passed, N failed".
set -uo pipefail

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then
    kill "$SERVER_PID" 2>/dev/null
    wait "$SERVER_PID" 2>/dev/null
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# json FILE EXPR: evaluates a Python expression on the parsed JSON `j`.
json() {
  /usr/bin/python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); v=eval(sys.argv[2]); print(v if not isinstance(v,(dict,list,bool)) else json.dumps(v))' "$1" "$2"
}

wait_ready() {
  for _ in $(seq 1 100); do
    if curl -fsS -o /dev/null "$BASE/metrics" 2>/dev/null || curl -fsS -o /dev/null "$BASE/" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  echo "server did not answer on $BASE" >&2
  [ -f "$WORK/server.log" ] && tail -20 "$WORK/server.log" >&2
  exit 1
}

if [ -n "${VIDEOGEN_HTTP_URL:-}" ]; then
  BASE="$VIDEOGEN_HTTP_URL"
  KEY="${VIDEOGEN_API_KEY:?VIDEOGEN_API_KEY is needed with VIDEOGEN_HTTP_URL}"
elif [ -n "${VIDEOGEN_SERVER:-}" ]; then
  HELP="$("$VIDEOGEN_SERVER" --helpfull 2>&1 || true)"  # absl exits 1 here
  if ! grep -q 'http_listen' <<<"$HELP"; then
    echo "SKIP: $VIDEOGEN_SERVER has no --http_listen flag yet (HttpServer not wired into main.cc)"
    exit 77
  fi
  DATA="$WORK/data"
  mkdir -p "$DATA"
  "$VIDEOGEN_SERVER" keys create --tenant=curl-e2e --store=sqlite --data_dir="$DATA" >"$WORK/key.json" \
    || { echo "keys create failed" >&2; exit 1; }
  KEY="$(json "$WORK/key.json" 'j["key"]')"
  HTTP_PORT="$(free_port)"
  GRPC_PORT="$(free_port)"
  # shellcheck disable=SC2086
  "$VIDEOGEN_SERVER" --simulate --store=sqlite --data_dir="$DATA" \
    --listen="127.0.0.1:$GRPC_PORT" --http_listen="127.0.0.1:$HTTP_PORT" \
    --poll_initial_delay=200ms --poll_interval=300ms \
    --sim_queued_for=2s --sim_generating_for=2s ${VIDEOGEN_SERVER_ARGS:-} \
    >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  BASE="http://127.0.0.1:$HTTP_PORT"
elif [ -n "${VIDEOGEN_HTTP_FAKE_SERVER:-}" ]; then
  "$VIDEOGEN_HTTP_FAKE_SERVER" --http_listen=127.0.0.1:0 --queued_for_ms=2000 \
    --generating_for_ms=2000 >"$WORK/server.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 1 100); do
    grep -q 'HTTP listening on' "$WORK/server.log" 2>/dev/null && break
    sleep 0.05
  done
  BASE="http://$(sed -n 's/^HTTP listening on //p' "$WORK/server.log" | head -1)"
  KEY="k-acme"
else
  echo "set VIDEOGEN_HTTP_URL, VIDEOGEN_SERVER or VIDEOGEN_HTTP_FAKE_SERVER" >&2
  exit 2
fi
wait_ready
AUTH="Authorization: Bearer $KEY"

PASSED=0
FAILED=0
check() {  # check NAME COMMAND...
  local name="$1"
  shift
  if "$@"; then
    PASSED=$((PASSED + 1))
    echo "ok   $name"
  else
    FAILED=$((FAILED + 1))
    echo "FAIL $name"
  fi
}
eq() { [ "$1" == "$2" ] || { echo "  expected '$2', got '$1'" >&2; return 1; }; }

# req METHOD PATH [curl args...]: body to $WORK/body, status to stdout.
req() {
  local method="$1" path="$2"
  shift 2
  curl -sS -o "$WORK/body" -w '%{http_code}' -X "$method" "$BASE$path" "$@"
}

# Errors come as {"error":{"code":HTTP,"status":NAME,"message":...}}.
error_is() {  # error_is HTTP NAME
  eq "$(json "$WORK/body" 'j["error"]["code"]')" "$1" &&
    eq "$(json "$WORK/body" 'j["error"]["status"]')" "$2" &&
    [ -n "$(json "$WORK/body" 'j["error"]["message"]')" ]
}

RUN="$(date +%s%N)"

# --- create, idempotency, get ---
STATUS="$(req POST /v1/generations -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"prompt\":\"a lighthouse at dusk\",\"durationSeconds\":5,\"labels\":{\"run\":\"r$RUN\",\"kind\":\"watch\"},\"requestId\":\"curl-$RUN-1\"}")"
check "create answers 200" eq "$STATUS" 200
ID1="$(json "$WORK/body" 'j["id"]')"
# Watch at once (in the background), so the stream starts at revision 1.
timeout 60 curl -sS -N "$BASE/v1/generations/$ID1:watch" -H "$AUTH" >"$WORK/watch.txt" &
WATCH_PID=$!
check "create returns a QUEUED generation" eq "$(json "$WORK/body" 'j["state"]')" STATE_QUEUED
check "create returns revision 1" eq "$(json "$WORK/body" 'j["revision"]')" 1
req POST /v1/generations -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"prompt\":\"a lighthouse at dusk\",\"durationSeconds\":5,\"labels\":{\"run\":\"r$RUN\",\"kind\":\"watch\"},\"requestId\":\"curl-$RUN-1\"}" >/dev/null
check "the same requestId returns the same generation" eq "$(json "$WORK/body" 'j["id"]')" "$ID1"
STATUS="$(req GET "/v1/generations/$ID1" -H "$AUTH")"
check "get answers 200 with the id" eq "$STATUS:$(json "$WORK/body" 'j["id"]')" "200:$ID1"

# --- watch: id 1, 2, 3 ... then the stream ends by itself ---
wait "$WATCH_PID"
check "the watch ended by itself (curl exit 0)" eq "$?" 0
IDS="$(sed -n 's/^id: //p' "$WORK/watch.txt" | tr '\n' ' ' | sed 's/ $//')"
echo "  watch printed ids: $IDS"
EXPECTED="$(seq -s ' ' 1 "$(echo "$IDS" | wc -w)")"
check "watch ids are 1, 2, 3 ... without gaps" eq "$IDS" "$EXPECTED"
check "watch printed at least 3 events" [ "$(echo "$IDS" | wc -w)" -ge 3 ]
check "first event is a snapshot" eq "$(sed -n 's/^event: //p' "$WORK/watch.txt" | head -1)" snapshot
LAST_DATA="$(sed -n 's/^data: //p' "$WORK/watch.txt" | tail -1)"
echo "$LAST_DATA" >"$WORK/last.json"
check "the last event is COMPLETED" eq "$(json "$WORK/last.json" 'j["generation"]["state"]')" STATE_COMPLETED
LAST="$(echo "$IDS" | awk '{print $NF}')"

# --- resume: Last-Event-ID: LAST-1 prints only LAST ---
timeout 30 curl -sS -N "$BASE/v1/generations/$ID1:watch" -H "$AUTH" -H "Last-Event-ID: $((LAST - 1))" >"$WORK/resume.txt"
check "resume ended by itself" eq "$?" 0
check "resume with Last-Event-ID: $((LAST - 1)) prints only $LAST" \
  eq "$(sed -n 's/^id: //p' "$WORK/resume.txt" | tr '\n' ' ' | sed 's/ $//')" "$LAST"
timeout 30 curl -sS -N "$BASE/v1/generations/$ID1:watch?after_revision=$((LAST - 1))" -H "$AUTH" >"$WORK/resume2.txt"
check "resume with ?after_revision works the same" \
  eq "$(sed -n 's/^id: //p' "$WORK/resume2.txt" | tr '\n' ' ' | sed 's/ $//')" "$LAST"

# --- media: the mirrored copy with Range ---
MIRROR="$(json "$WORK/last.json" 'j["generation"].get("video",{}).get("mirrorUrl","")')"
if [ -n "$MIRROR" ]; then
  STATUS="$(req GET "$MIRROR" -H "$AUTH" -H 'Range: bytes=0-99')"
  check "media Range bytes=0-99 answers 206 with 100 bytes" eq "$STATUS:$(stat -c %s "$WORK/body")" "206:100"
  check "media without a key is 401" eq "$(req GET "$MIRROR")" 401
  STATUS="$(req GET "$MIRROR" -H "$AUTH" -H 'Range: bytes=999999999-')"
  check "media past the end is 416" eq "$STATUS" 416
else
  echo "  (no mirrorUrl: media checks skipped; is --mirror off?)"
fi

# --- cancel ---
req POST /v1/generations -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"prompt\":\"to be cancelled\",\"labels\":{\"run\":\"r$RUN\",\"kind\":\"cancel\"}}" >/dev/null
ID2="$(json "$WORK/body" 'j["id"]')"
STATUS="$(req POST "/v1/generations/$ID2:cancel" -H "$AUTH")"
check "cancel answers 200 CANCELLED" eq "$STATUS:$(json "$WORK/body" 'j["state"]')" "200:STATE_CANCELLED"
STATUS="$(req POST "/v1/generations/$ID2:cancel" -H "$AUTH")"
check "cancelling again returns it unchanged" eq "$STATUS:$(json "$WORK/body" 'j["state"]')" "200:STATE_CANCELLED"

# --- list: paging and filters ---
STATUS="$(req GET "/v1/generations?page_size=1&labels.run=r$RUN" -H "$AUTH")"
check "list page 1 answers 200 with 1 generation" eq "$STATUS:$(json "$WORK/body" 'len(j["generations"])')" "200:1"
check "list page 1 is the newest (the cancelled one)" eq "$(json "$WORK/body" 'j["generations"][0]["id"]')" "$ID2"
TOKEN="$(json "$WORK/body" 'j.get("nextPageToken","")')"
check "list page 1 has a next_page_token" [ -n "$TOKEN" ]
STATUS="$(req GET "/v1/generations?page_size=1&labels.run=r$RUN" -G --data-urlencode "page_token=$TOKEN" -H "$AUTH")"
check "list page 2 is the older one" eq "$STATUS:$(json "$WORK/body" 'j["generations"][0]["id"]')" "200:$ID1"
check "list page 2 is the last" eq "$(json "$WORK/body" 'j.get("nextPageToken","")')" ""
req GET "/v1/generations?labels.run=r$RUN&states=CANCELLED" -H "$AUTH" >/dev/null
check "filter states=CANCELLED" eq "$(json "$WORK/body" '[g["id"] for g in j["generations"]]')" "[\"$ID2\"]"
req GET "/v1/generations?labels.run=r$RUN&states=STATE_COMPLETED&states=STATE_FAILED" -H "$AUTH" >/dev/null
check "filter repeated states" eq "$(json "$WORK/body" '[g["id"] for g in j["generations"]]')" "[\"$ID1\"]"
req GET "/v1/generations?labels.run=r$RUN&labels.kind=watch" -H "$AUTH" >/dev/null
check "filter by two labels" eq "$(json "$WORK/body" '[g["id"] for g in j["generations"]]')" "[\"$ID1\"]"

# --- errors ---
check "no key: 401 UNAUTHENTICATED" eq "$(req GET /v1/generations)" 401
check "  with the JSON error body" error_is 401 UNAUTHENTICATED
check "a wrong key: 401" eq "$(req GET /v1/generations -H 'Authorization: Bearer vg_not_a_key')" 401
check "unknown id: 404" eq "$(req GET /v1/generations/does-not-exist -H "$AUTH")" 404
check "  NOT_FOUND body" error_is 404 NOT_FOUND
check "unknown JSON field: 400" eq "$(req POST /v1/generations -H "$AUTH" -H 'Content-Type: application/json' -d '{"prompt":"x","colour":"red"}')" 400
check "  INVALID_ARGUMENT body" error_is 400 INVALID_ARGUMENT
check "empty prompt: 400" eq "$(req POST /v1/generations -H "$AUTH" -H 'Content-Type: application/json' -d '{"prompt":""}')" 400
check "bad states value: 400" eq "$(req GET '/v1/generations?states=DONE' -H "$AUTH")" 400
check "watch of an unknown id: 404" eq "$(req GET /v1/generations/does-not-exist:watch -H "$AUTH")" 404
check "watch without a key: 401" eq "$(req GET "/v1/generations/$ID1:watch")" 401
check "metrics need no key" eq "$(req GET /metrics)" 200
check "the dashboard needs no key" eq "$(req GET /)" 200

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
