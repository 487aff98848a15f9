#!/usr/bin/env bash
# videogen developer entry point. One script, a few subcommands:
#   deps   install missing Debian packages and npm tools (idempotent, quiet when done)
#   build  deps + configure + build (RelWithDebInfo) into build/
#   test   build + every test (ctest), with a throwaway PostgreSQL cluster
#          started for the run and stopped after (CTEST_ARGS adds ctest flags,
#          e.g. CTEST_ARGS='-L core')
#   demo   build + server with the simulated upstream + one streamed generation
#   serve  build + videogen-server in the foreground (extra args passed through)
#   bench  build + the benchmark suite (writes build/bench/results.md)
#   fuzz   the libFuzzer targets, FUZZ_SECONDS each (default 600), clang build
#   cluster  build + PostgreSQL, three replicas behind nginx, the simulator,
#          one generation watched through the proxy while a replica is killed
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"

APT_PACKAGES=(
  build-essential cmake ninja-build pkg-config git curl ca-certificates
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  libabsl-dev libcurl4-openssl-dev nlohmann-json3-dev libgtest-dev libgmock-dev
  libsqlite3-dev sqlite3 libcpp-httplib-dev libcli11-dev libspdlog-dev
  python3-grpcio python3-protobuf clang-format
  wrk yamllint python3-yaml prometheus tmux bsdutils procps openssl
  libboost1.81-dev libssl-dev golang-github-gogo-googleapis-dev
  libpq-dev postgresql-15 nginx
  clang libclang-rt-14-dev python3-botocore chromium
  golang-go protoc-gen-go protoc-gen-go-grpc golang-google-grpc-dev
  golang-google-protobuf-dev golang-github-golang-protobuf-1-5-dev
)

log() { printf '\033[1m[dev]\033[0m %s\n' "$*" >&2; }

need_sudo() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

cmd_deps() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
      missing+=("$p")
    fi
  done
  # Node may come from a package that bundles npm; only ask apt when absent.
  command -v npm >/dev/null 2>&1 || missing+=(nodejs npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    need_sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    need_sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # npm tools live in a local node_modules; package-lock.json pins them.
  if [ ! -x "$ROOT/node_modules/.bin/buf" ] || [ ! -d "$ROOT/node_modules/@grpc/grpc-js" ] \
     || [ "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]; then
    log "installing npm tools (npm ci)"
    (cd "$ROOT" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  fi
}

cmd_build() {
  cmd_deps
  local gen=()
  command -v ninja >/dev/null && gen=(-G Ninja)
  if [ ! -f "$BUILD_DIR/CMakeCache.txt" ]; then
    cmake -S "$ROOT" -B "$BUILD_DIR" "${gen[@]}" -DCMAKE_BUILD_TYPE="$BUILD_TYPE" "$@" >/dev/null
  elif [ "$#" -gt 0 ]; then
    cmake "$BUILD_DIR" "$@" >/dev/null
  fi
  cmake --build "$BUILD_DIR" --parallel "$(nproc)"
}

cmd_test() {
  cmd_deps
  # PostgreSQL for the store and scale-out tests: a throwaway cluster in a
  # temporary directory, stopped (and removed) however the run ends.
  local pg_dir
  pg_dir="$(mktemp -d /tmp/videogen-pg.XXXXXX)"
  trap 'bash "$ROOT/scripts/pg.sh" stop "'"$pg_dir"'" >/dev/null 2>&1 || true' EXIT
  bash "$ROOT/scripts/pg.sh" start "$pg_dir" >/dev/null
  VIDEOGEN_TEST_DATABASE_URL="$(cat "$pg_dir/url")"
  export VIDEOGEN_TEST_DATABASE_URL
  cmd_build -DVIDEOGEN_POSTGRES_TESTS=ON
  # shellcheck disable=SC2086
  (cd "$BUILD_DIR" && ctest --output-on-failure --timeout 600 -j "$(nproc)" ${CTEST_ARGS:-})
  [ -n "${CTEST_ARGS:-}" ] && return
  # The fuzz targets, built with clang, replay their corpus and fuzz briefly.
  local fuzz_dir="$ROOT/build-fuzz"
  cmake -S "$ROOT" -B "$fuzz_dir" -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
        -DVIDEOGEN_FUZZ=ON >/dev/null
  cmake --build "$fuzz_dir" --target fuzz_targets --parallel "$(nproc)"
  (cd "$fuzz_dir" && ctest -L fuzz --output-on-failure)
}

cmd_demo() {
  cmd_build
  exec "$ROOT/scripts/demo.sh" "$BUILD_DIR"
}

cmd_serve() {
  cmd_build
  exec "$BUILD_DIR/server/videogen-server" "$@"
}

cmd_bench() {
  cmd_build
  exec "$ROOT/scripts/bench.sh" "$BUILD_DIR" "$@"
}

main() {
  local sub="${1:-}"
  shift || true
  case "$sub" in
    deps) cmd_deps ;;
    build) cmd_build "$@" ;;
    test) cmd_test ;;
    demo) cmd_demo ;;
    serve) cmd_serve "$@" ;;
    bench) cmd_bench "$@" ;;
    fuzz) cmd_deps; exec "$ROOT/scripts/fuzz.sh" ;;
    cluster) cmd_build; exec bash "$ROOT/scripts/cluster.sh" demo "$BUILD_DIR" ;;
    *)
      sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      [ -z "$sub" ] || { echo "unknown subcommand: $sub" >&2; }
      exit 2
      ;;
  esac
}

main "$@"
