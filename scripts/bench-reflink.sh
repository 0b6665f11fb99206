#!/usr/bin/env bash
# Reflink storage against the dm-snapshot format, in one run on one file system (xfs made with
# reflink=1, or btrfs with BENCH_FS=btrfs, on a loop-mounted sparse file): cowctl serve's iSCSI
# target serving one PC from a clone of a 1 GiB golden image of random data (storage: reflink),
# from a COW of 32 KiB chunks and from one of 4 KiB chunks, and tgt serving a plain copy of
# the image, each measured with scripts/bench/iscsi-bench.c (libiscsi, one session):
#   first writes: 4 KiB random writes at queue depth 16 into a fresh disk, over 1 GiB;
#   rewrites: the same over the first 64 MiB, written whole before;
#   4 KiB random reads at depth 16 and 1 MiB sequential reads at depth 4.
# Then one reset's pause after 16, 256 and 768 MiB written, and `cowctl status` of a
# room of 200 PCs with 20 GiB disks, each holding 256 blocks of its own (served, and not
# served) and one reset's pause on such a disk. Prints tables with ratios. Not part of the
# tests.
#   scripts/bench-reflink.sh          (RUNTIME=10 seconds per job, BENCH_FS=xfs)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runtime=${RUNTIME:-10}
fs=${BENCH_FS:-xfs}
scripts/provision.sh --tests >/dev/null
cargo build --release --quiet --bins
cowctl=$repo/target/release/cowctl
work=$(mktemp -d /var/tmp/cowctl-bench-reflink.XXXXXX)
gcc -O2 -Wall -o "$work/iscsi-bench" scripts/bench/iscsi-bench.c -liscsi
source scripts/lib/iscsi.sh
mnt=$work/mnt
rooms=()
cleanup() {
    for r in "${rooms[@]}"; do
        COWCTL_RUN_DIR=$r/run COWCTL_MANIFEST=$r/room.yaml "$cowctl" down >/dev/null 2>&1 || true
    done
    stop_tgt
    umount "$mnt" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64G "$work/fs.img"
case $fs in
    xfs) mkfs.xfs -q -f -m reflink=1 "$work/fs.img" ;;
    btrfs) mkfs.btrfs -q -f "$work/fs.img" ;;
    *) echo "bench-reflink: BENCH_FS is xfs or btrfs" >&2; exit 2 ;;
esac
mkdir "$mnt"
mount -o loop "$work/fs.img" "$mnt"
echo "bench-reflink: a 1 GiB golden image of random data on $fs" >&2
head -c $((1 << 30)) /dev/urandom >"$mnt/golden.img"
cp --reflink=never "$mnt/golden.img" "$mnt/plain.img"
sync

# room NAME STORAGE CHUNK PCS GOLDEN: a room in $mnt/NAME of PCS iSCSI PCs (pc-1 … pc-N) on
# GOLDEN, applied; sets url (pc-1's) and room_dir.
room() {
    local name=$1 storage=$2 chunk=$3 pcs=$4 golden=$5 port nbd
    room_dir=$mnt/$name
    rooms+=("$room_dir")
    mkdir -p "$room_dir/cow"
    read -r port nbd < <(free_ports 2)
    cat >"$room_dir/room.yaml" <<YAML
backend: userspace
images:
  g:
    path: $golden
    storage: $storage
defaults:
  image: g
  cow_dir: $room_dir/cow
  cow_size: 20GiB
  chunk: $chunk
iscsi:
  iqn_prefix: iqn.2024-01.lan.bench
  portals: ["127.0.0.1:$port"]
  acl: open
nbd:
  listen: 127.0.0.1:$nbd
  socket: $room_dir/nbd.sock
pcs:
  - name: pc-{1..$pcs}
YAML
    in_room "$room_dir" apply >/dev/null
    url=iscsi://127.0.0.1:$port/iqn.2024-01.lan.bench:pc-1/0
}

in_room() {
    local dir=$1
    shift
    COWCTL_RUN_DIR=$dir/run COWCTL_MANIFEST=$dir/room.yaml "$cowctl" "$@"
}

declare -A iops mbps pause
run_jobs() {
    local side=$1 url=$2
    read -r iops[$side-first] mbps[$side-first] < <("$work/iscsi-bench" "$url" randwrite 4096 16 "$runtime")
    qemu-io -f raw -c "write -P 0x5a 0 64M" "$url" >/dev/null
    read -r iops[$side-rewrite] mbps[$side-rewrite] < <("$work/iscsi-bench" "$url" randwrite 4096 16 "$runtime" 64)
    read -r iops[$side-randread] mbps[$side-randread] < <("$work/iscsi-bench" "$url" randread 4096 16 "$runtime")
    read -r iops[$side-seqread] mbps[$side-seqread] < <("$work/iscsi-bench" "$url" seqread 1048576 4 "$runtime")
    echo "bench-reflink: $side first ${iops[$side-first]} rewrite ${iops[$side-rewrite]} randread ${iops[$side-randread]} seqread ${mbps[$side-seqread]} MB/s" >&2
}

# One reset's pause after the PC wrote 16, 256 and 768 MiB.
pauses() {
    local side=$1 dir=$2 url=$3 all=()
    for mib in 16 256 768; do
        qemu-io -f raw -c "write -P 0x33 128M ${mib}M" "$url" >/dev/null
        all+=("$(in_room "$dir" --json reset pc-1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["seconds"] * 1000, 1))')")
    done
    pause[$side]="${all[0]} / ${all[1]} / ${all[2]} ms"
    echo "bench-reflink: $side reset pauses ${all[*]} ms" >&2
}

for side in reflink cow32 cow4; do
    case $side in
        reflink) room "$side" reflink 32KiB 1 "$mnt/golden.img" ;;
        cow32) room "$side" cow 32KiB 1 "$mnt/golden.img" ;;
        cow4) room "$side" cow 4KiB 1 "$mnt/golden.img" ;;
    esac
    run_jobs "$side" "$url"
    pauses "$side" "$room_dir" "$url"
    in_room "$room_dir" down >/dev/null
done
start_tgt "$mnt/plain.img" iqn.2024-01.lan.bench:tgt "$work/tgtd.log"
run_jobs tgt "$tgt_url"
stop_tgt

# status_ms DIR: the median of 3 `cowctl status` runs of the room, in ms.
status_ms() {
    local all=() t
    for _ in 1 2 3; do
        t=$(date +%s%N)
        in_room "$1" status >/dev/null
        all+=($((($(date +%s%N) - t) / 1000000)))
    done
    printf '%s\n' "${all[@]}" | sort -n | sed -n 2p
}

# A room of 200 PCs with 20 GiB disks: the golden image's 1 GiB of data at the start of a
# sparse 20 GiB file; each PC's disk gets 256 blocks of 4 KiB of its own at random places
# (written into the clones while nothing serves them), then the room is served again.
echo "bench-reflink: 200 PCs with 20 GiB disks" >&2
truncate -s 20G "$mnt/golden20.img"
dd if="$mnt/golden.img" of="$mnt/golden20.img" bs=1M conv=notrunc status=none
declare -A apply200 status200 offline200 pause20
for side in reflink cow32; do
    storage=reflink
    [[ $side == cow32 ]] && storage=cow
    t=$(date +%s%N)
    room "$side-200" "$storage" 32KiB 200 "$mnt/golden20.img"
    apply200[$side]=$((($(date +%s%N) - t) / 1000000))
    if [[ $side == reflink ]]; then
        in_room "$room_dir" down >/dev/null
        python3 - "$room_dir/cow" <<'PY'
import os, random, sys
rng = random.Random(7)
block = bytes(range(256)) * 16
for name in sorted(os.listdir(sys.argv[1])):
    if not name.endswith(".img"):
        continue
    fd = os.open(os.path.join(sys.argv[1], name), os.O_WRONLY)
    for _ in range(256):
        os.pwrite(fd, block, rng.randrange(20 << 18) * 4096)
    os.fsync(fd)
    os.close(fd)
PY
        offline200[$side]=$(status_ms "$room_dir")
        in_room "$room_dir" apply >/dev/null
    fi
    status200[$side]=$(status_ms "$room_dir")
    # One reset's pause on a 20 GiB disk (pc-1, served, with what it holds of its own).
    pause20[$side]=$(in_room "$room_dir" --json reset pc-1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["seconds"] * 1000, 1))')
    in_room "$room_dir" down >/dev/null
    [[ $side == cow32 ]] && offline200[$side]=$(status_ms "$room_dir")
done

ratio() { python3 -c "print(f'{$1 / max($2, 0.1):.2f}×')"; }
fmt() { python3 -c "print(f'{int(float($1)):,}')"; }
cell() { echo "$(fmt "${iops[$1-$2]}") IOPS, $(fmt "${mbps[$1-$2]}") MB/s"; }
echo
echo "| iSCSI, iscsi-bench on $fs ($runtime s per job) | reflink clone | COW, 32 KiB chunks | COW, 4 KiB chunks | tgt, plain file | reflink ÷ COW 32 KiB | reflink ÷ COW 4 KiB | reflink ÷ tgt |"
echo "|---|---|---|---|---|---|---|---|"
for job in first rewrite randread seqread; do
    case $job in
        first) label="4 KiB random write qd16, fresh disk (first writes)" ;;
        rewrite) label="4 KiB random write qd16, written blocks (rewrites)" ;;
        randread) label="4 KiB random read qd16" ;;
        seqread) label="1 MiB sequential read qd4" ;;
    esac
    echo "| $label | $(cell reflink $job) | $(cell cow32 $job) | $(cell cow4 $job) | $(cell tgt $job) | $(ratio "${iops[reflink-$job]}" "${iops[cow32-$job]}") | $(ratio "${iops[reflink-$job]}" "${iops[cow4-$job]}") | $(ratio "${iops[reflink-$job]}" "${iops[tgt-$job]}") |"
done
echo
echo "| one PC | reflink clone | COW, 32 KiB chunks | COW, 4 KiB chunks |"
echo "|---|---|---|---|"
echo "| one reset's pause after 16 / 256 / 768 MiB written | ${pause[reflink]} | ${pause[cow32]} | ${pause[cow4]} |"
echo
echo "| 200 PCs, 20 GiB disks | reflink clones | COW files, 32 KiB chunks | reflink ÷ COW |"
echo "|---|---|---|---|"
echo "| one reset's pause, a 20 GiB disk | ${pause20[reflink]} ms | ${pause20[cow32]} ms | $(ratio "${pause20[reflink]}" "${pause20[cow32]}") |"
echo "| apply (200 new disks) | ${apply200[reflink]} ms | ${apply200[cow32]} ms | $(ratio "${apply200[reflink]}" "${apply200[cow32]}") |"
echo "| status, served (median of 3) | ${status200[reflink]} ms | ${status200[cow32]} ms | $(ratio "${status200[reflink]}" "${status200[cow32]}") |"
echo "| status, not served (FIEMAP per disk / COW header) | ${offline200[reflink]} ms | ${offline200[cow32]} ms | $(ratio "${offline200[reflink]}" "${offline200[cow32]}") |"
