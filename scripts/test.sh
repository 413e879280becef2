#!/usr/bin/env bash
# The one test command: installs what the suite needs when it is missing
# (fuse3 for fusermount3, pkg-config, curl, rsync, socat, openssl), then
# runs every test:
# formatting, clippy, unit tests and the end-to-end tests that mount real
# FUSE filesystems against `pkgfs serve` on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
command -v curl >/dev/null 2>&1 || need+=(curl)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v socat >/dev/null 2>&1 || need+=(socat)     # TLS in front of the test registry
command -v openssl >/dev/null 2>&1 || need+=(openssl) # its self-signed certificate
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
  echo "test.sh: /dev/fuse is missing: the end-to-end tests need FUSE" >&2
  exit 1
fi

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# Tests that mount run several processes each (registry, daemon, tools):
# two at a time fit 2 cores without starving the timing-bounded fault tests.
cargo test --locked --no-run
# A watchdog: a hung syscall must fail the run, not stall CI. On expiry,
# leftover test mounts (registry on 127.0.0.1, mountpoint under /tmp) are
# lazily unmounted so that no process stays blocked on them.
rc=0
timeout -k 10 "${PKGFS_TEST_TIMEOUT:-900}" \
  cargo test --locked --no-fail-fast -- --test-threads="${PKGFS_TEST_THREADS:-2}" || rc=$?
# The README's first command, once, with the binary just built.
if [ "$rc" = 0 ]; then
  demo_mnt=$(mktemp -d)
  PKGFS_BIN=target/debug/pkgfs timeout 120 bash scripts/demo.sh --once "$demo_mnt" >/tmp/pkgfs-demo.log 2>&1 ||
    { rc=$?; echo "test.sh: scripts/demo.sh --once failed:" >&2; cat /tmp/pkgfs-demo.log >&2; }
  grep -qs " $demo_mnt fuse" /proc/mounts && { echo "test.sh: the demo left its mount" >&2; rc=1; fusermount3 -uz "$demo_mnt"; }
  rmdir "$demo_mnt" 2>/dev/null || true
  [ "$rc" = 0 ] && echo "test.sh: scripts/demo.sh --once: ok"
fi
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  echo "test.sh: the tests did not finish within ${PKGFS_TEST_TIMEOUT:-900} s (a hang)" >&2
  awk '$1 ~ /^pkgfs:127\.0\.0\.1/ && $2 ~ /^\/tmp\// {print $2}' /proc/mounts |
    while read -r m; do fusermount3 -uz "$m" || true; done
fi
exit "$rc"
