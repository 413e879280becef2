#!/usr/bin/env bash
# Benchmarks of pkgfs against curl (and rclone, where it can be installed)
# on the same loopback `pkgfs serve`. Prints one table of medians with the
# ratio pkgfs/reference measured in the same run.
#   scripts/bench.sh           full run (1 GiB file, 5 runs per case)
#   scripts/bench.sh --quick   small run (64 MiB, 3 runs), under a minute
#   scripts/bench.sh --only cp,read   only these cases (read, warm, first,
#                              fio, ls, cp, rclone); combines with --quick
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0; only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --only) only=${2:?--only needs a list}; shift ;;
    *) echo "usage: $0 [--quick] [--only read,warm,first,fio,ls,cp,rclone]" >&2; exit 2 ;;
  esac
  shift
done
want() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]]; }
if [ $quick = 1 ]; then size_mb=64; runs=3; nfiles=200; nversions=300; fio_secs=1
else size_mb=1024; runs=5; nfiles=1000; nversions=2000; fio_secs=5; fi

SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
for t in fio:fio curl:curl fusermount3:fuse3; do
  command -v "${t%%:*}" >/dev/null 2>&1 || need+=("${t#*:}")
done
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null || true
fi
if ! command -v rclone >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rclone >/dev/null 2>&1 || true
fi

cargo build --release --quiet
bin=$PWD/target/release/pkgfs
work=$(mktemp -d /tmp/pkgfs-bench.XXXXXX)
mnt=$work/mnt; mkdir -p "$mnt"
export PKGFS_SERVE_TOKEN="bench-$RANDOM$RANDOM"
export PKGFS_TOKEN=$PKGFS_SERVE_TOKEN
server_pid=""; mount_pid=""; rclone_pids=()

cleanup() {
  set +e
  for m in "$mnt" "$work/rmnt"; do
    grep -qs " $m fuse" /proc/mounts && { fusermount3 -u "$m" || fusermount3 -uz "$m"; }
  done
  [ -n "$mount_pid" ] && kill "$mount_pid" 2>/dev/null
  for p in "${rclone_pids[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null
  wait 2>/dev/null
  cp "$work/mount.log" /tmp/pkgfs-bench-mount.log 2>/dev/null # for a look afterwards
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

"$bin" serve --listen 127.0.0.1:0 --data "$work/data" --test-hooks >"$work/serve.out" 2>"$work/serve.log" &
server_pid=$!
url=""
for _ in $(seq 100); do url=$(sed -n 's/^listening on //p' "$work/serve.out"); [ -n "$url" ] && break; sleep 0.1; done
[ -n "$url" ] || { cat "$work/serve.log"; exit 1; }
url=${url%/}/
api=${url}api/packages/alice/generic
stats() { curl -fsS "${url}_pkgfs/test/stats"; }
stat_of() { stats | python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
reset() { curl -fsS -X POST "${url}_pkgfs/test/reset" >/dev/null; }
put() { curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" --upload-file "$2" "$api/$1" >/dev/null; }

echo "generating data: ${size_mb} MiB file, $nfiles files in a version, $nversions versions" >&2
big=$work/big.bin
head -c $((size_mb * 1024 * 1024)) /dev/urandom >"$big"
put bench/1/big.bin "$big"
echo x >"$work/small"
want ls || { nfiles=0; nversions=0; }
for i in $(seq $nfiles); do echo "$api/many/1/f$i"; done |
  xargs -P 8 -I{} curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" --upload-file "$work/small" {} >/dev/null
for i in $(seq $nversions); do echo "$api/p$((i % 20))/v$i/f"; done |
  xargs -P 8 -I{} curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" --upload-file "$work/small" {} >/dev/null

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# BENCH_VERBOSE=1 prints every run of each case (to stderr) besides the medians.
show_runs() { if [ -n "${BENCH_VERBOSE:-}" ]; then echo "  runs: pkgfs ${p[*]} | reference ${c[*]}" >&2; fi; }

# Milliseconds to open FILE and read its first 4 KiB, timed inside the process.
first_byte_ms() {
  python3 -c "
import time, sys
t = time.perf_counter()
with open(sys.argv[1], 'rb', buffering=0) as f:
    f.read(4096)
print((time.perf_counter() - t) * 1000)" "$1"
}

do_mount() { # fresh cache unless $1 = keep
  [ "${1:-}" = keep ] || rm -rf "$work/cache"
  "$bin" mount "$url" "$mnt" --foreground --cache-dir "$work/cache" "${@:2}" 2>>"$work/mount.log" &
  mount_pid=$!
  for _ in $(seq 200); do grep -qs " $mnt fuse" /proc/mounts && return 0; sleep 0.05; done
  echo "mount failed"; cat "$work/mount.log"; exit 1
}
do_umount() {
  fusermount3 -u "$mnt"; wait "$mount_pid" 2>/dev/null || true; mount_pid=""
}
hwm() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$mount_pid/status" 2>/dev/null || echo "?"; }
drop_caches() { sync; echo 3 | $SUDO tee /proc/sys/vm/drop_caches >/dev/null 2>&1 || true; }

rows=()
row() { rows+=("$(printf '| %-54s | %12s | %12s | %7s | %s' "$1" "$2" "$3" "$4" "$5")"); }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }

# 1. cold sequential read vs curl
if want read; then
  p=(); c=(); r=()
  for _ in $(seq $runs); do
    do_mount
    t0=$(now); dd if="$mnt/alice/bench/1/big.bin" of=/dev/null bs=1M status=none; t1=$(now)
    p+=("$(python3 -c "print($t1-$t0)")"); r+=("$(hwm)")
    do_umount
    t0=$(now); curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" -o /dev/null "$api/bench/1/big.bin"; t1=$(now)
    c+=("$(python3 -c "print($t1-$t0)")")
  done
  h=()
  for _ in $(seq $runs); do
    t0=$(now); curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" "$api/bench/1/big.bin" | sha256sum >/dev/null; t1=$(now)
    h+=("$(python3 -c "print($t1-$t0)")")
  done
  hm=$(printf '%s\n' "${h[@]}" | median)
  pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median); show_runs
  row "cold sequential read ${size_mb} MiB, verified (MB/s)" "$(python3 -c "print(round($size_mb/$pm))")" "$(python3 -c "print(round($size_mb/$hm))")" "$(ratio "$hm" "$pm")" "curl | sha256sum"
  row "cold sequential read ${size_mb} MiB (MB/s)" "$(python3 -c "print(round($size_mb/$pm))")" "$(python3 -c "print(round($size_mb/$cm))")" "$(ratio "$cm" "$pm")" "curl; peak RSS $(printf '%s\n' "${r[@]}" | sort -n | tail -1) MiB"
fi

# 2. warm re-read vs a local file
if want warm; then
  do_mount
  dd if="$mnt/alice/bench/1/big.bin" of=/dev/null bs=1M status=none
  p=(); c=()
  cp "$big" "$work/local.bin"; cat "$work/local.bin" >/dev/null
  # Page-cache reads take ~50 ms and swing with the host: three times the
  # runs, interleaved, for a steadier median.
  for _ in $(seq $((runs * 3))); do
    t0=$(now); dd if="$mnt/alice/bench/1/big.bin" of=/dev/null bs=1M status=none; t1=$(now); p+=("$(python3 -c "print($t1-$t0)")")
    t0=$(now); dd if="$work/local.bin" of=/dev/null bs=1M status=none; t1=$(now); c+=("$(python3 -c "print($t1-$t0)")")
  done
  pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median); show_runs
  row "warm re-read ${size_mb} MiB (MB/s)" "$(python3 -c "print(round($size_mb/$pm))")" "$(python3 -c "print(round($size_mb/$cm))")" "$(ratio "$cm" "$pm")" "local file; peak RSS $(hwm) MiB"
  do_umount
fi

# 3. first byte: open + read 4 KiB (timed inside the process) vs curl's
#    time to first byte
if want first; then
  p=(); c=()
  for _ in $(seq $runs); do
    do_mount
    ls "$mnt/alice/bench/1" >/dev/null
    p+=("$(first_byte_ms "$mnt/alice/bench/1/big.bin")")
    do_umount
    c+=("$(curl -fsS --user "alice:$PKGFS_SERVE_TOKEN" -o /dev/null -r 0-4095 -w '%{time_starttransfer}' "$api/bench/1/big.bin" | python3 -c "import sys; print(float(sys.stdin.read())*1000)")")
  done
  pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median); show_runs
  row "first byte of ${size_mb} MiB file (ms)" "$(printf %.2f "$pm")" "$(printf %.2f "$cm")" "$(python3 -c "print(f'+{$pm-$cm:.2f}ms')")" "open+read 4 KiB vs curl time_starttransfer"
fi

# 4. random 4 KiB reads with fio, cold and warm
if want fio; then
  if command -v fio >/dev/null 2>&1; then
    for jobs in 1 4; do
      do_mount
      reset
      out=$(fio --name=r --filename="$mnt/alice/bench/1/big.bin" --rw=randread --bs=4k --size=${size_mb}M \
        --numjobs=$jobs --time_based --runtime=$fio_secs --readonly --group_reporting --output-format=terse 2>/dev/null | head -1)
      iops=$(echo "$out" | cut -d';' -f8)
      sent=$(( $(stat_of bytes_sent) / 1024 / 1024 ))
      row "fio randread 4k cold, $jobs job(s) (IOPS)" "$iops" "-" "-" "server sent ${sent} MiB; RSS $(hwm) MiB"
      dd if="$mnt/alice/bench/1/big.bin" of=/dev/null bs=1M status=none
      out=$(fio --name=r --filename="$mnt/alice/bench/1/big.bin" --rw=randread --bs=4k --size=${size_mb}M \
        --numjobs=$jobs --time_based --runtime=$fio_secs --readonly --group_reporting --output-format=terse 2>/dev/null | head -1)
      row "fio randread 4k warm, $jobs job(s) (IOPS)" "$(echo "$out" | cut -d';' -f8)" "-" "-" "RSS $(hwm) MiB"
      do_umount
    done
  fi
fi

# 5. listings: ls -l of a version with many files, ls -lR of an owner.
# The path is resolved first (one request: the package's versions), so
# the listing's own requests are counted apart; the reference is `ls` of
# a local tree of the same shape (ls itself costs most of the time).
if want ls; then
  mkdir -p "$work/local/many/1"
  for i in $(seq $nfiles); do echo x >"$work/local/many/1/f$i"; done
  for i in $(seq $nversions); do mkdir -p "$work/local/p$((i % 20))/v$i"; echo x >"$work/local/p$((i % 20))/v$i/f"; done
  for what in "alice/many/1:many/1:ls -l of $nfiles files" "alice:.:ls -lR of $((nversions + 3)) versions"; do
    path=${what%%:*}; rest=${what#*:}; lpath=${rest%%:*}; label=${rest#*:}
    do_mount "" --metadata-ttl 600
    reset
    stat "$mnt/$path" >/dev/null; lreq=$(stat_of requests)
    reset
    t0=$(now); ls -lR "$mnt/$path" >/dev/null; t1=$(now)
    cold=$(python3 -c "print(round(($t1-$t0)*1000,1))"); creq=$(stat_of requests)
    reset
    p=(); c=()
    for _ in $(seq $runs); do
      t0=$(now); ls -lR "$mnt/$path" >/dev/null; t1=$(now); p+=("$(python3 -c "print($t1-$t0)")")
      t0=$(now); ls -lR "$work/local/$lpath" >/dev/null; t1=$(now); c+=("$(python3 -c "print($t1-$t0)")")
    done
    wreq=$(stat_of requests)
    pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median); show_runs
    warm=$(python3 -c "print(round($pm*1000,1))"); local_ms=$(python3 -c "print(round($cm*1000,1))")
    row "$label, cold / warm (ms)" "$cold / $warm" "$local_ms" "$(ratio "$pm" "$cm")" "local tree; requests: $lreq to resolve the path, $creq to list it cold, $wreq warm"
    do_umount
  done
fi

# 6. cp of the big file into the mount vs curl --upload-file
if want cp; then
  p=(); c=(); n=0
  do_mount
  # Each upload starts from clean page cache (sync: the previous run's
  # dirty pages are not written back during this one), and the order
  # alternates so that neither side always follows the other. The page
  # cache is not dropped between runs: a user's machine does not either.
  # Every upload is of new bytes (the first 32 are stamped before it), as a
  # real publication is: neither side may find its blob already stored.
  stamp() { printf '%-32s' "$1-$n-$RANDOM" | dd of="$big" bs=32 count=1 conv=notrunc status=none; }
  cp_once() { stamp cp; sync; t0=$(now); cp "$big" "$mnt/alice/up/$n/"; t1=$(now); p+=("$(python3 -c "print($t1-$t0)")"); }
  curl_once() { stamp curl; sync; t0=$(now); put "upc/$n/big.bin" "$big"; t1=$(now); c+=("$(python3 -c "print($t1-$t0)")"); }
  for _ in $(seq $runs); do
    n=$((n+1))
    mkdir -p "$mnt/alice/up/$n"
    if [ $((n % 2)) = 1 ]; then cp_once; curl_once; else curl_once; cp_once; fi
  done
  pm=$(printf '%s\n' "${p[@]}" | median); cm=$(printf '%s\n' "${c[@]}" | median); show_runs
  row "cp ${size_mb} MiB into the mount (s)" "$(printf %.2f "$pm")" "$(printf %.2f "$cm")" "$(ratio "$pm" "$cm")" "curl --upload-file; peak RSS $(hwm) MiB"
  do_umount
fi

# 7. rclone mount of `rclone serve http` with the same file, where available:
#    the read cases above, so pkgfs is compared with the mount a user would
#    otherwise pick. rclone verifies nothing. "server sent" is what the
#    rclone server wrote to its sockets (/proc/PID/io wchar).
if want rclone; then
  if command -v rclone >/dev/null 2>&1; then
    rmnt=$work/rmnt; rfile=$rmnt/bench/big.bin
    mkdir -p "$work/rsrc/bench" "$rmnt"; ln "$big" "$work/rsrc/bench/big.bin"
    rclone serve http "$work/rsrc" --addr 127.0.0.1:18765 >/dev/null 2>&1 & rserve=$!; rclone_pids+=($rserve)
    sleep 1
    rmount() {
      rclone mount --http-url http://127.0.0.1:18765 :http: "$rmnt" --vfs-cache-mode "$1" \
        --cache-dir "$work/rcache" >/dev/null 2>&1 & rpid=$!
      for _ in $(seq 100); do grep -qs " $rmnt fuse" /proc/mounts && return 0; sleep 0.05; done
      echo "rclone mount failed" >&2; return 1
    }
    rumount() { rhwm=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$rpid/status" 2>/dev/null || echo "?"); fusermount3 -u "$rmnt"; wait $rpid 2>/dev/null || true; rm -rf "$work/rcache"; }
    rsent() { awk '/^wchar/ {print $2}' "/proc/$rserve/io"; }
    for mode in off full; do
      p=(); c=(); hw=0
      for _ in $(seq $runs); do
        rmount $mode
        t0=$(now); dd if="$rfile" of=/dev/null bs=1M status=none; t1=$(now)
        p+=("$(python3 -c "print($t1-$t0)")")
        rumount; if [ "$rhwm" != "?" ] && [ "$rhwm" -gt "$hw" ]; then hw=$rhwm; fi
      done
      rm_=$(printf '%s
' "${p[@]}" | median); show_runs
      row "rclone ($mode) cold sequential read (MB/s)" "$(python3 -c "print(round($size_mb/$rm_))")" "-" "-" "compare with pkgfs's row; peak RSS $hw MiB"
      rmount $mode
      dd if="$rfile" of=/dev/null bs=1M status=none
      p=()
      for _ in $(seq $runs); do
        t0=$(now); dd if="$rfile" of=/dev/null bs=1M status=none; t1=$(now); p+=("$(python3 -c "print($t1-$t0)")")
      done
      rm_=$(printf '%s
' "${p[@]}" | median); show_runs
      rumount
      row "rclone ($mode) warm re-read (MB/s)" "$(python3 -c "print(round($size_mb/$rm_))")" "-" "-" "peak RSS $rhwm MiB"
      p=()
      for _ in $(seq $runs); do
        rmount $mode
        ls "$rmnt/bench" >/dev/null
        p+=("$(first_byte_ms "$rfile")")
        rumount
      done
      rm_=$(printf '%s
' "${p[@]}" | median); show_runs
      row "rclone ($mode) first byte (ms)" "$(printf %.2f "$rm_")" "-" "-" "open+read 4 KiB, as for pkgfs"
      if command -v fio >/dev/null 2>&1; then
        for jobs in 1 4; do
          rmount $mode
          s0=$(rsent)
          out=$(fio --name=r --filename="$rfile" --rw=randread --bs=4k --size=${size_mb}M \
            --numjobs=$jobs --time_based --runtime=$fio_secs --readonly --group_reporting --output-format=terse 2>/dev/null | head -1)
          sent=$(( ($(rsent) - s0) / 1024 / 1024 ))
          row "rclone ($mode) fio randread 4k cold, $jobs job(s) (IOPS)" "$(echo "$out" | cut -d';' -f8)" "-" "-" "server sent ${sent} MiB"
          dd if="$rfile" of=/dev/null bs=1M status=none
          out=$(fio --name=r --filename="$rfile" --rw=randread --bs=4k --size=${size_mb}M \
            --numjobs=$jobs --time_based --runtime=$fio_secs --readonly --group_reporting --output-format=terse 2>/dev/null | head -1)
          rumount
          row "rclone ($mode) fio randread 4k warm, $jobs job(s) (IOPS)" "$(echo "$out" | cut -d';' -f8)" "-" "-" "peak RSS $rhwm MiB"
        done
      fi
    done
  else
    row "rclone" "-" "-" "-" "not installable here: skipped"
  fi
fi

echo
echo "pkgfs benchmarks — $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r), file ${size_mb} MiB, median of $runs"
printf '| %-54s | %12s | %12s | %7s | %s\n' case pkgfs reference ratio notes
printf '|%s|%s|%s|%s|%s\n' "$(printf -- '-%.0s' {1..56})" "--------------" "--------------" "---------" "------"
printf '%s\n' "${rows[@]}"
