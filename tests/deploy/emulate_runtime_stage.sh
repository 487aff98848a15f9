#!/usr/bin/env bash
# Emulates deploy/Dockerfile's runtime stage where no Docker engine runs:
# debootstrap a bookworm minbase (close to debian:bookworm-slim), install the
# runtime stage's package list, add uid 10001, copy the binaries, then run the
# server as 10001 on a read-only root with a tmpfs /tmp and a data volume, scrape
# /metrics and stop it with SIGTERM (exit 0 expected).
# Needs root, debootstrap and the Debian mirror; not a ctest (network, minutes).
#   tests/deploy/emulate_runtime_stage.sh BUILD_DIR [ROOTFS_DIR]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
BUILD="$(cd "${1:?usage: $0 BUILD_DIR [ROOTFS_DIR]}" && pwd)"
FS="${2:-/tmp/videogen-runtime-rootfs}"
WORK="$(mktemp -d)"

if [ ! -x "$FS/usr/bin/apt-get" ]; then
  debootstrap --variant=minbase bookworm "$FS" http://deb.debian.org/debian >/dev/null
fi
cp /etc/resolv.conf "$FS/etc/resolv.conf"
PKGS="$(/usr/bin/python3 -c "import sys; sys.path.insert(0, '$ROOT/tests/deploy')
import check_consistency as c; print(' '.join(c.dockerfile_runtime_packages('$ROOT')))")"
echo "runtime packages: $PKGS"
chroot "$FS" /bin/sh -c "export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq --no-install-recommends $PKGS >/dev/null
  getent passwd 10001 >/dev/null || { groupadd --gid 10001 videogen &&
    useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/videogen \
      --shell /usr/sbin/nologin videogen; }
  install -d -o 10001 -g 10001 -m 0750 /var/lib/videogen"
for b in server/videogen-server server/sim/videogen-sim client/videogen; do
  strip --strip-debug -o "$FS/usr/local/bin/$(basename "$b")" "$BUILD/$b"
done
chroot "$FS" /bin/sh -c "! ldd /usr/local/bin/* | grep 'not found'"
echo "ldd: every library resolves"

mkdir -p "$WORK/ro" "$WORK/vol"
chown 10001:10001 "$WORK/vol"
cat >"$WORK/run.sh" <<EOF
set -eu
mount --bind "$FS" "$WORK/ro"
mount -o remount,ro,bind "$WORK/ro"
mount -t tmpfs tmpfs "$WORK/ro/tmp"
mount --bind "$WORK/vol" "$WORK/ro/var/lib/videogen"
mount -t proc proc "$WORK/ro/proc"
if touch "$WORK/ro/etc/probe" 2>/dev/null; then echo "root is writable"; exit 1; fi
chroot --userspec=10001:10001 "$WORK/ro" /usr/local/bin/videogen-server \
  --listen=127.0.0.1:50651 --metrics_listen=127.0.0.1:9651 \
  --data_dir=/var/lib/videogen --simulate &
pid=\$!
for _ in \$(seq 50); do curl -sf http://127.0.0.1:9651/metrics >"$WORK/metrics" && break; sleep 0.2; done
grep -q '^videogen_' "$WORK/metrics"
echo "metrics: \$(grep -c '^videogen_' "$WORK/metrics") samples"
kill -TERM \$pid
wait \$pid
echo "SIGTERM: exit \$?"
EOF
unshare -m sh "$WORK/run.sh"
ls -l "$WORK/vol"
rm -rf "$WORK"
echo "runtime stage emulation: ok"
