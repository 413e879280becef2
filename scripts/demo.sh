#!/usr/bin/env bash
# The README's first command: build pkgfs, start a local registry
# (`pkgfs serve` on 127.0.0.1) with a few sample packages, mount it, show
# the tree and a checksum, and unmount on Ctrl-C.
#   scripts/demo.sh [MOUNTPOINT]      (default ./mnt)
#   scripts/demo.sh --once [MOUNTPOINT]   show, check the checksum, unmount, exit
set -euo pipefail
cd "$(dirname "$0")/.."

once=0
if [ "${1:-}" = "--once" ]; then once=1; shift; fi
mnt=${1:-./mnt}

if ! command -v fusermount3 >/dev/null 2>&1; then
  echo "demo: installing fuse3"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fuse3 >/dev/null
fi

# PKGFS_BIN: an already built binary (scripts/test.sh runs the demo with
# the debug build); otherwise the release build.
if [ -n "${PKGFS_BIN:-}" ]; then
  bin=$(cd "$(dirname "$PKGFS_BIN")" && pwd)/$(basename "$PKGFS_BIN")
else
  cargo build --release --quiet
  bin=$PWD/target/release/pkgfs
fi
work=$(mktemp -d)
mkdir -p "$mnt"
mnt=$(cd "$mnt" && pwd)
export PKGFS_SERVE_TOKEN="demo-$RANDOM$RANDOM$RANDOM"

server_pid=""
cleanup() {
  trap - INT TERM EXIT
  if grep -qs " $mnt fuse" /proc/mounts; then fusermount3 -u "$mnt" || fusermount3 -uz "$mnt" || true; fi
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null || true
  rm -rf "$work"
  echo "demo: unmounted $mnt, registry stopped"
}
trap cleanup INT TERM EXIT

"$bin" serve --listen 127.0.0.1:0 --data "$work/data" >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$work/serve.out")
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { echo "demo: the registry did not start"; cat "$work/serve.log"; exit 1; }
url=${url%/}/

put() { # owner package version file source
  curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" --upload-file "$5" \
    "${url}api/packages/$1/generic/$2/$3/$4"
}
mkdir -p "$work/src/tool"
echo "hello from pkgfs" >"$work/hello.txt"
printf '#!/bin/sh\necho tool 2.0.0\n' >"$work/src/tool/tool"
head -c 3000000 /dev/urandom >"$work/src/tool/data.bin"
tar -czf "$work/tool.tar.gz" -C "$work/src" tool
put alice hello 1.0.0 hello.txt "$work/hello.txt"
put alice hello 1.1.0 hello.txt "$work/hello.txt"
put alice tool 2.0.0 tool-linux-amd64.tar.gz "$work/tool.tar.gz"
put alice tool 2.0.0 README.txt "$work/hello.txt"

PKGFS_TOKEN=$PKGFS_SERVE_TOKEN "$bin" mount "$url" "$mnt" --cache-dir "$work/cache" \
  --log-file "$work/mount.log"

echo "registry: $url  (user alice, token in \$PKGFS_SERVE_TOKEN of this script)"
echo "mounted at $mnt:"
(cd "$mnt" && find . | sort)
echo
through=$(sha256sum <"$mnt/alice/tool/2.0.0/tool-linux-amd64.tar.gz")
direct=$(sha256sum <"$work/tool.tar.gz")
echo "sha256 through the mount: ${through%% *}"
echo "sha256 of the uploaded file: ${direct%% *}"
if [ "$through" != "$direct" ]; then echo "demo: the checksums differ" >&2; exit 1; fi
tar -tzf "$mnt/alice/tool/2.0.0/tool-linux-amd64.tar.gz"
if [ "$once" = 1 ]; then exit 0; fi
echo
echo "Try: ls -l $mnt/alice/hello; mkdir $mnt/alice/hello/2.0.0; cp somefile $mnt/alice/hello/2.0.0/"
echo "Press Ctrl-C to unmount and stop the registry."
while true; do sleep 3600; done
