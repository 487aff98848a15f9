#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for tests and demos, built from Debian's
# binaries. Nothing here is for production: trust authentication on
# loopback and fsync off.
#
#   scripts/pg.sh start DIR   create DIR (if needed), init a cluster in it,
#                             start it on a free 127.0.0.1 port with its unix
#                             socket in DIR; prints the connection URL and
#                             writes it to DIR/url
#   scripts/pg.sh stop DIR    stop the cluster and remove DIR
#   scripts/pg.sh url DIR     print the URL of a running cluster
#
# The URL names the `postgres` database as superuser `videogen`; tests create
# their own databases from it. PostgreSQL refuses to run as root, so under
# root the server runs as the `postgres` system user (created by Debian's
# package), or as `videogen-pg` when that user does not exist.
set -euo pipefail

PG_VERSION=15
PG_BIN="/usr/lib/postgresql/${PG_VERSION}/bin"

log() { printf '[pg] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

ensure_installed() {
  if [ -x "$PG_BIN/initdb" ] && [ -x "$PG_BIN/pg_ctl" ] &&
     [ -f /usr/include/postgresql/libpq-fe.h ]; then
    return
  fi
  log "installing postgresql-${PG_VERSION} and libpq-dev from Debian"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    --no-install-recommends "postgresql-${PG_VERSION}" libpq-dev >/dev/null
  [ -x "$PG_BIN/initdb" ] || die "no $PG_BIN/initdb after installing"
}

# The user the server runs as: ourselves, or a non-root user under root.
server_user() {
  if [ "$(id -u)" -ne 0 ]; then
    id -un
  elif id -u postgres >/dev/null 2>&1; then
    echo postgres
  else
    if ! id -u videogen-pg >/dev/null 2>&1; then
      useradd --system --no-create-home --shell /usr/sbin/nologin videogen-pg
    fi
    echo videogen-pg
  fi
}

# Runs "$@" as the server user.
as_server() {
  local user="$1"
  shift
  if [ "$user" = "$(id -un)" ]; then
    "$@"
  else
    runuser -u "$user" -- "$@"
  fi
}

free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

cmd_start() {
  local dir="$1"
  ensure_installed
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  if [ -f "$dir/data/postmaster.pid" ]; then
    die "$dir already holds a running cluster (scripts/pg.sh stop $dir first)"
  fi
  local user
  user="$(server_user)"
  # The server user must reach DIR: mktemp -d makes it 0700 for root.
  if [ "$user" != "$(id -un)" ]; then
    chown "$user" "$dir"
    chmod 0755 "$dir"
    if ! as_server "$user" test -w "$dir"; then
      die "$user cannot write $dir (a parent directory is closed to it); use a directory under /tmp"
    fi
  fi
  as_server "$user" "$PG_BIN/initdb" -D "$dir/data" -U videogen -A trust \
    -E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  # Another process may take the port between picking and binding it: retry.
  local port attempt
  for attempt in 1 2 3 4 5; do
    port="$(free_port)"
    if as_server "$user" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
      -w -t 30 -o "-c port=$port -c listen_addresses=127.0.0.1 \
        -c unix_socket_directories=$dir -c fsync=off \
        -c synchronous_commit=off -c full_page_writes=off \
        -c max_connections=300 -c shared_buffers=64MB" \
      start >/dev/null 2>&1; then
      local url="postgresql://videogen@127.0.0.1:${port}/postgres"
      echo "$url" >"$dir/url"
      echo "$url"
      return
    fi
    log "start on port $port failed (attempt $attempt):"
    tail -n 3 "$dir/server.log" >&2 || true
  done
  die "could not start PostgreSQL; see $dir/server.log"
}

cmd_stop() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  if [ -f "$dir/data/postmaster.pid" ]; then
    local user
    user="$(stat -c %U "$dir/data")"
    as_server "$user" "$PG_BIN/pg_ctl" -D "$dir/data" -m immediate -w stop \
      >/dev/null 2>&1 || log "pg_ctl stop failed; removing $dir anyway"
  fi
  rm -rf "$dir"
}

main() {
  [ "$#" -eq 2 ] || die "usage: $0 start|stop|url DIR"
  case "$1" in
    start) cmd_start "$2" ;;
    stop) cmd_stop "$2" ;;
    url) cat "$2/url" ;;
    *) die "usage: $0 start|stop|url DIR" ;;
  esac
}

main "$@"
