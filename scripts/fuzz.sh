#!/usr/bin/env bash
# Builds the libFuzzer targets (tests/fuzz) with clang into build-fuzz/ and
# runs each for FUZZ_SECONDS (default 600). Needs the Debian packages clang
# and libclang-rt-14-dev.
#   FUZZ_SECONDS=60 scripts/fuzz.sh                      # all targets
#   FUZZ_TARGETS="page_token_fuzzer" scripts/fuzz.sh     # one target
#   FUZZ_KEEP_GOING=1 scripts/fuzz.sh  # count crashes instead of stopping
# New corpus entries stay in build-fuzz/tests/fuzz/work/<target>/corpus and
# crash inputs in .../artifacts; neither goes into the source tree. Exits
# nonzero when any target crashed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${FUZZ_BUILD_DIR:-$ROOT/build-fuzz}"
SECONDS_EACH="${FUZZ_SECONDS:-600}"
TARGETS="${FUZZ_TARGETS:-upstream_parse_fuzzer validation_fuzzer page_token_fuzzer}"
JOBS="${FUZZ_BUILD_JOBS:-2}"

log() { printf '\033[1m[fuzz]\033[0m %s\n' "$*" >&2; }

if ! command -v clang++ >/dev/null 2>&1 ||
   ! ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a \
       >/dev/null 2>&1; then
  log "needs clang with libFuzzer: apt-get install clang libclang-rt-14-dev"
  exit 2
fi

log "configuring $BUILD_DIR (clang++, VIDEOGEN_FUZZ=ON)"
cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_COMPILER=clang++ -DVIDEOGEN_FUZZ=ON >/dev/null
# shellcheck disable=SC2086
cmake --build "$BUILD_DIR" --target $TARGETS -j"$JOBS"

export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1}"
status=0
summary=()
for t in $TARGETS; do
  bin="$BUILD_DIR/tests/fuzz/$t"
  work="$BUILD_DIR/tests/fuzz/work/$t"
  mkdir -p "$work/corpus" "$work/artifacts"
  seeds="$ROOT/tests/fuzz/corpus/$t"
  args=(-max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048
        -print_final_stats=1 -artifact_prefix="$work/artifacts/")
  case "$t" in
    upstream_parse_fuzzer) args+=(-max_len=8192 -dict="$ROOT/tests/fuzz/json.dict") ;;
    validation_fuzzer) args+=(-max_len=4096 -dict="$ROOT/tests/fuzz/validation.dict") ;;
    *) args+=(-max_len=1024) ;;
  esac
  if [ -n "${FUZZ_KEEP_GOING:-}" ]; then
    args+=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  fi
  before=$(find "$work/artifacts" -type f | wc -l)
  log "$t: ${SECONDS_EACH}s, corpus $work/corpus (seeded from tests/fuzz/corpus/$t)"
  rc=0
  "$bin" "${args[@]}" "$work/corpus" "$seeds" >"$work/log" 2>&1 || rc=$?
  after=$(find "$work/artifacts" -type f | wc -l)
  crashes=$((after - before))
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)
  speed=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)
  if [ -z "$execs" ]; then  # fork mode prints progress lines instead
    execs=$(grep -o '#[0-9]*: cov' "$work/log" | tail -1 | tr -dc '0-9' || true)
    speed=$(grep -o 'exec/s [0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)
  fi
  cov=$(grep -o 'cov: [0-9]*' "$work/log" | tail -1 | grep -o '[0-9]*$' || true)
  corpus=$(find "$work/corpus" -type f | wc -l)
  line="$t: rc=$rc execs=${execs:-?} exec/s=${speed:-?} cov=${cov:-?} corpus=$corpus new_crashes=$crashes"
  summary+=("$line")
  if [ "$rc" -ne 0 ] || [ "$crashes" -gt 0 ]; then
    status=1
    log "$t FAILED; log: $work/log; inputs: $work/artifacts/"
    grep -E 'ERROR: |runtime error|FUZZ_CHECK' "$work/log" | head -5 >&2 || true
  fi
done
printf '%s\n' "${summary[@]}"
exit "$status"
