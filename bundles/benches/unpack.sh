#!/usr/bin/env bash
# Unpack benchmark: berth (verified) vs `umoci unpack` vs `zstd -dc | tar -x`
# on a real ~200 MB root filesystem image, into tmpfs, side by side.
#
#   sudo bundles/benches/unpack.sh            # 5 runs each
#   BERTH_BENCH_RUNS=9 sudo bundles/benches/unpack.sh
#
# Setup (cached in $BERTH_BENCH_DIR, default /var/tmp/berth-bench):
#   1. debootstrap --variant=minbase bookworm, from the apt mirror this host
#      uses; if that fails, a tar of this host's /usr is used instead and the
#      script says so;
#   2. packed into an OCI image with umoci (one gzip layer);
#   3. recompressed to zstd with skopeo.
# Then it times, interleaved, with the target emptied before each run:
#   berth-zstd   berth-build unpack of the zstd image (sha256 of the blob and
#                the DiffID checked while streaming; config.json written)
#   berth-gzip   the same on umoci's gzip image
#   umoci-gzip   umoci unpack of the gzip image (umoci 0.4.7 cannot read zstd)
#   zstd-tar     zstd -dc LAYER | tar -x (no verification at all)
# and prints medians and the ratios the project targets.
set -euo pipefail
cd "$(dirname "$0")/../.."

runs=${BERTH_BENCH_RUNS:-5}
dir=${BERTH_BENCH_DIR:-/var/tmp/berth-bench}
[ "$(id -u)" = 0 ] || { echo "unpack.sh: run as root (ownership, devices, tmpfs mount)" >&2; exit 1; }
for t in umoci skopeo zstd jq tar; do
  command -v "$t" >/dev/null || { echo "unpack.sh: $t missing: apt-get install $t" >&2; exit 1; }
done
mkdir -p "$dir"

# 1. The root filesystem.
source_kind="debootstrap --variant=minbase bookworm"
if [ ! -d "$dir/minbase" ]; then
  command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap >/dev/null
  mirror=$(grep -h -o -E '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')
  [ -n "$mirror" ] || mirror=$(grep -h -o -E '^deb +[^ ]+' /etc/apt/sources.list 2>/dev/null | head -1 | awk '{print $2}')
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "setup: debootstrap minbase from $mirror" >&2
  rm -rf "$dir/minbase.tmp"
  if debootstrap --variant=minbase bookworm "$dir/minbase.tmp" "$mirror" >"$dir/debootstrap.log" 2>&1; then
    mv "$dir/minbase.tmp" "$dir/minbase"
  else
    echo "setup: debootstrap failed (see $dir/debootstrap.log); FALLING BACK to a copy of this host's /usr" >&2
    rm -rf "$dir/minbase.tmp" "$dir/usr-root"
    mkdir -p "$dir/usr-root"
    tar -C / -cf - usr/bin usr/lib/x86_64-linux-gnu usr/share/perl | tar -C "$dir/usr-root" -xf -
    mv "$dir/usr-root" "$dir/minbase"
    echo fallback > "$dir/minbase.kind"
  fi
fi
[ -f "$dir/minbase.kind" ] && source_kind="FALLBACK: tar of this host's /usr"

# 2. and 3. The images.
if [ ! -f "$dir/gzip/index.json" ]; then
  echo "setup: umoci insert" >&2
  rm -rf "$dir/gzip"
  umoci init --layout "$dir/gzip"
  umoci new --image "$dir/gzip:bench"
  umoci insert --image "$dir/gzip:bench" "$dir/minbase" /
  umoci config --image "$dir/gzip:bench" --config.cmd /bin/sh
fi
if [ ! -f "$dir/zstd/index.json" ]; then
  echo "setup: skopeo copy --dest-compress-format zstd" >&2
  rm -rf "$dir/zstd"
  skopeo copy --quiet --dest-compress-format zstd "oci:$dir/gzip:bench" "oci:$dir/zstd:bench"
fi
manifest=$(jq -r '.manifests[0].digest' "$dir/zstd/index.json" | cut -d: -f2)
layer=$(jq -r '.layers[0].digest' "$dir/zstd/blobs/sha256/$manifest" | cut -d: -f2)
layer_path="$dir/zstd/blobs/sha256/$layer"

# The berth binary, optimised for speed.
cargo build --quiet --profile bench-release -p berth-build
berth=$PWD/target/bench-release/berth-build

# A private tmpfs for the targets.
mnt="$dir/tmpfs"
mkdir -p "$mnt"
mountpoint -q "$mnt" || mount -t tmpfs -o size=4g,mode=0755 berth-bench "$mnt"
trap 'umount "$mnt" 2>/dev/null || true' EXIT

unc=$(zstd -dc "$layer_path" | wc -c)
entries=$(zstd -dc "$layer_path" | tar -t | wc -l)
echo "source: $source_kind ($(du -sh "$dir/minbase" | cut -f1)); layer: $((unc / 1000000)) MB uncompressed, $entries entries, zstd $(( $(stat -c %s "$layer_path") / 1000000 )) MB"

# Runs are interleaved (one of each tool per round), so a burst of load
# from elsewhere on the machine hits all tools alike; medians are reported.
names=(berth-zstd berth-gzip umoci-gzip zstd-tar)
cmds=(
  "$berth unpack oci:$dir/zstd:bench $mnt/t/b"
  "$berth unpack oci:$dir/gzip:bench $mnt/t/b"
  "umoci unpack --image $dir/gzip:bench $mnt/t/b"
  "zstd -dc $layer_path | tar -x -C $mnt/t"
)
declare -A times cpus
TIMEFORMAT='%R %U %S'
for round in $(seq 0 "$runs"); do
  for i in "${!names[@]}"; do
    rm -rf "$mnt/t" && mkdir "$mnt/t"
    sync
    # bash's time: wall, user and system seconds of the command and its
    # children. CPU time is far less sensitive than wall time to load from
    # other processes on a shared machine, so both are reported.
    t=$( { time bash -c "${cmds[$i]}" >/dev/null 2>&1 || echo FAIL; } 2>&1 )
    case "$t" in *FAIL*) echo "unpack.sh: ${names[$i]} failed: ${cmds[$i]}" >&2; exit 1;; esac
    read -r wall user sys <<<"$t"
    # Round 0 warms the page cache and is not counted.
    if [ "$round" != 0 ]; then
      times[${names[$i]}]+="$wall "
      cpus[${names[$i]}]+="$(awk -v u="$user" -v s="$sys" 'BEGIN {printf "%.3f", u + s}') "
    fi
  done
  echo "round $round done" >&2
done
rm -rf "$mnt/t"

median() { tr ' ' '\n' <<<"$1" | grep . | sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.3f", m}'; }
for n in "${names[@]}"; do printf '%-11s wall (s): %s\n%-11s cpu  (s): %s\n' "$n" "${times[$n]}" "" "${cpus[$n]}"; done
bz=$(median "${times[berth-zstd]}"); bg=$(median "${times[berth-gzip]}"); um=$(median "${times[umoci-gzip]}"); zt=$(median "${times[zstd-tar]}")
cbz=$(median "${cpus[berth-zstd]}"); cbg=$(median "${cpus[berth-gzip]}"); cum=$(median "${cpus[umoci-gzip]}"); czt=$(median "${cpus[zstd-tar]}")
printf '\nmedians over %s runs, wall (s): berth-zstd %s  berth-gzip %s  umoci-gzip %s  zstd-tar %s\n' "$runs" "$bz" "$bg" "$um" "$zt"
printf 'medians over %s runs, cpu  (s): berth-zstd %s  berth-gzip %s  umoci-gzip %s  zstd-tar %s\n' "$runs" "$cbz" "$cbg" "$cum" "$czt"
echo "load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
awk -v bz="$bz" -v bg="$bg" -v um="$um" -v zt="$zt" -v cbz="$cbz" -v czt="$czt" -v cum="$cum" -v cbg="$cbg" 'BEGIN {
  printf "wall: berth-zstd / zstd-tar   = %.2fx  (target <= 1.00)\n", bz / zt
  printf "wall: umoci-gzip / berth-zstd = %.1fx  (target >= 5)\n", um / bz
  printf "wall: umoci-gzip / berth-gzip = %.1fx  (same gzip image for both)\n", um / bg
  printf "cpu:  berth-zstd / zstd-tar   = %.2fx\n", cbz / czt
  printf "cpu:  umoci-gzip / berth-zstd = %.1fx\n", cum / cbz
}'
