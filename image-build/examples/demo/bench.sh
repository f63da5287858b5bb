#!/usr/bin/env bash
# Boot-to-first-service benchmark (issue 5): the demo appliance vs a floor
# initrd, same kernel, same QEMU flags, one invocation, boots interleaved.
#
#   image-build/examples/demo/bench.sh [RUNS]     (as root; default 7 runs each)
#
# The time is from QEMU's spawn to the console line of the demo's first
# service ("heartbeat: beating every 2s"), measured by `berth-qemu boot-time`.
# The floor initrd holds only busybox-static, /dev/console, /dev/kmsg and an
# /init that is a trivial static program (C, built here with musl-gcc) which
# execs the same busybox command; that command writes the line to /dev/kmsg
# (so the console line carries the guest's timestamp, as berth-init's do):
# what any init costs at least.
# A third initrd, the kernel-work floor, adds what the kernel has to do for
# the demo before its first service whatever the init: the same /init execs
# a busybox script that loads the data disk's drivers (the demo's own
# modules and modules.dep, with busybox modprobe), mounts the ext4 data
# disk and cgroup2, runs the boot task's stand-in in a cgroup and new pid,
# mount, network, uts and ipc namespaces (it writes the disk and syncs),
# then execs the same busybox command in new namespaces and a cgroup. No
# image is verified or unpacked, no seccomp, no pivot_root: the demo's
# time over this one is the init's own (its code, and what it asks of the
# kernel beyond this).
# Builds the demo first with `.ci/demo --no-boot`.
# Run it on a quiet machine: QEMU's TCG shares the host's cores. A second
# measurement, in guest time under `boot-time --icount` (one instruction is
# one nanosecond), does not depend on the host: 3 boots each. Each boot also
# reports how many blocks of guest code QEMU's TCG translated up to the line
# (new code costs a translation the first time it runs).
set -euo pipefail
cd "$(dirname "$0")/../../.."
runs=${1:-7}
line="heartbeat: beating every 2s"

.ci/demo --no-boot >/dev/null
bin=target/release

# The floor: same kernel, initrd = busybox + /dev/console + /init.
floor=out/demo-floor
stage=$(mktemp -d)
trap 'rm -rf "$stage" "${disk:-}"' EXIT
mkdir -p "$stage/bin" "$stage/dev"
cp /bin/busybox "$stage/bin/busybox"
mknod -m 600 "$stage/dev/console" c 5 1
mknod -m 666 "$stage/dev/null" c 1 3
mknod -m 600 "$stage/dev/kmsg" c 1 11
command -v musl-gcc >/dev/null || { echo "bench: musl-gcc missing: apt-get install musl-tools" >&2; exit 1; }
# initrd OUTDIR ARG...: OUTDIR/initrd.img of the stage, whose /init is a
# static C program exec'ing ARG... (no `"` or `\` in them: they become C
# string literals as they are), and the demo's kernel as OUTDIR/vmlinuz.
initrd() {
  local out=$1 argv="" a
  shift
  for a in "$@"; do
    case $a in *[\"\\]*) echo "bench: initrd: $a: has a quote or backslash" >&2; exit 1 ;; esac
    argv+="\"$a\", "
  done
  printf '%s\n' '#include <unistd.h>' 'int main(void) {' \
    "    char *argv[] = {${argv}0};" '    char *envp[] = {0};' \
    '    execve(argv[0], argv, envp);' '    return 127;' '}' > "$stage/init.c"
  musl-gcc -static -O2 -s -o "$stage/init" "$stage/init.c"
  rm "$stage/init.c"
  rm -rf "$out" && mkdir -p "$out"
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | zstd -q -19) > "$out/initrd.img"
  cp out/demo/vmlinuz "$out/vmlinuz"
}
initrd "$floor" /bin/busybox sh -c "echo '$line' > /dev/kmsg; exec /bin/busybox sleep 100000"

# The kernel-work floor: the floor's files, the demo's modules, a script.
kfloor=out/demo-kernel-floor
zstd -dc out/demo/initrd.img | (cd "$stage" && cpio -idm --quiet 'lib/modules/*')
[ -f "$(echo "$stage"/lib/modules/*/modules.dep)" ] \
  || { echo "bench: no lib/modules/*/modules.dep in out/demo/initrd.img" >&2; exit 1; }
mkdir -p "$stage/proc" "$stage/sys" "$stage/data"
cat > "$stage/work" <<'WORK'
set -e
b=/bin/busybox
$b mount -t proc proc /proc
$b mount -t sysfs sysfs /sys
$b mount -t devtmpfs dev /dev
$b modprobe -a virtio_pci virtio_blk
while [ ! -b /dev/vda ]; do $b usleep 1000; done
$b mount -t ext4 -o noatime /dev/vda /data
$b mount -t cgroup2 cgroup2 /sys/fs/cgroup
$b mkdir /sys/fs/cgroup/task /sys/fs/cgroup/service
$b sh -c 'echo $$ > /sys/fs/cgroup/task/cgroup.procs
  exec /bin/busybox unshare -f -p -m -n -u -i /bin/busybox sh -c "echo 1 > /data/count; /bin/busybox sync"'
echo $$ > /sys/fs/cgroup/service/cgroup.procs
WORK
echo "exec \$b unshare -f -p -m -n -u -i \$b sh -c \"echo '$line' > /dev/kmsg; exec \$b sleep 100000\"" >> "$stage/work"
initrd "$kfloor" /bin/busybox sh /work

# Same VM options for all three (the floor ignores the disk, both floors
# the port). Every
# boot gets a new data disk, made by berth-qemu before QEMU starts (not
# timed): boot-time stops each VM with QMP quit, which would leave the ext4
# journal dirty and make the next boot's mount replay it. The disk image is
# on tmpfs (BERTH_BENCH_DISK to choose): the boot task syncs, QEMU turns the
# guest's flushes into fdatasync, and the host disk's latency is not what
# this measures.
disk=${BERTH_BENCH_DISK:-/dev/shm/berth-demo-bench-data.img}
opts=(--data-disk "$disk:64M" --port 18080:80)
sample() { # OUTDIR → one boot's "ms blocks"; a failed boot ends the bench
  rm -f "$disk"
  local out
  out=$("$bin/berth-qemu" boot-time "$1" --until "$line" --runs 1 "${opts[@]}") \
    || { echo "bench: the boot of $1 failed (above)" >&2; exit 1; }
  out=$(sed -n -e 's/.*median \([0-9]*\) ms.*/\1/p' -e 's/^code translated.*median \([0-9]*\) blocks.*/\1/p' <<<"$out" | paste -sd ' ')
  [[ $out =~ ^[0-9]+\ [0-9]+$ ]] || { echo "bench: no time and block count for $1 in berth-qemu's output" >&2; exit 1; }
  echo "$out"
}
berth=() base=() kern=() berth_tb=() base_tb=() kern_tb=()
for i in $(seq "$runs"); do
  # Plain assignments: set -e ends the bench when a boot fails.
  s=$(sample out/demo)
  read -r b btb <<<"$s"
  s=$(sample "$floor")
  read -r f ftb <<<"$s"
  s=$(sample "$kfloor")
  read -r k ktb <<<"$s"
  echo "run $i: demo $b ms ($btb blocks translated), floor $f ms ($ftb blocks), kernel-work floor $k ms ($ktb blocks)"
  berth+=("$b") base+=("$f") kern+=("$k") berth_tb+=("$btb") base_tb+=("$ftb") kern_tb+=("$ktb")
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
mb=$(median "${berth[@]}") mf=$(median "${base[@]}")
echo "boot to the first service ($runs runs each, interleaved, TCG):"
echo "  berth demo: median $mb ms (${berth[*]})"
echo "  floor:      median $mf ms (${base[*]})"
awk -v b="$mb" -v f="$mf" 'BEGIN {printf "  ratio berth/floor: %.3f (target <= 1.15)\n", b/f}'
mk=$(median "${kern[@]}")
echo "  kernel-work floor: median $mk ms (${kern[*]})"
awk -v b="$mb" -v f="$mf" -v k="$mk" 'BEGIN {printf "  ratio kernel-work floor/floor: %.3f, berth/kernel-work floor: %.3f\n", k/f, b/k}'
# A boot is CPU-bound work that the host's load can only slow down, so the
# fastest boot of each is the one least disturbed: on a busy host the ratio
# of the minima moves less than the ratio of the medians.
nb=$(printf '%s\n' "${berth[@]}" | sort -n | head -1) nf=$(printf '%s\n' "${base[@]}" | sort -n | head -1)
awk -v b="$nb" -v f="$nf" 'BEGIN {printf "  fastest boots: demo %d ms, floor %d ms, ratio %.3f\n", b, f, b/f}'
# Under TCG a boot pays for each block of guest code the first time it runs
# (QEMU translates it): the count says how much new code each one ran.
tb=$(median "${berth_tb[@]}") tf=$(median "${base_tb[@]}")
tk=$(median "${kern_tb[@]}")
awk -v b="$tb" -v f="$tf" -v k="$tk" 'BEGIN {printf "guest code QEMU translated up to the line (info jit, median): demo %d blocks, floor %d blocks (%+d), kernel-work floor %d blocks\n", b, f, b - f, k}'
guest() { # OUTDIR → median guest ms of 3 boots under -icount
  rm -f "$disk"
  "$bin/berth-qemu" boot-time "$1" --until "$line" --runs 3 --icount "${opts[@]}" \
    | sed -n 's/.*median \([0-9]*\) ms.*/\1/p'
}
gb=$(guest out/demo) gf=$(guest "$floor") gk=$(guest "$kfloor")
echo "the same in guest time (QEMU -icount: 1 ns per guest instruction, 3 boots each):"
echo "  berth demo: median $gb ms, floor: median $gf ms, kernel-work floor: median $gk ms"
awk -v b="$gb" -v f="$gf" -v k="$gk" 'BEGIN {printf "  ratio berth/floor: %.3f; kernel-work floor/floor: %.3f\n", b/f, k/f}'
echo "initrd sizes: demo $(stat -c %s out/demo/initrd.img) bytes, floor $(stat -c %s "$floor/initrd.img") bytes"
