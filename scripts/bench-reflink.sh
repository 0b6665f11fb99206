#!/usr/bin/env bash
# Reflink storage against the dm-snapshot format, in one run on one file system (xfs made with
# reflink=1, or btrfs with BENCH_FS=btrfs, on a loop-mounted sparse file): cowctl serve's iSCSI
# target serving one PC from a clone of a 1 GiB golden image of random data (storage: reflink),
# from a COW of 32 KiB chunks and from one of 4 KiB chunks, and tgt serving a plain copy of
# the image, each measured with scripts/bench/iscsi-bench.c (libiscsi, one session):
#   first writes: 4 KiB random writes at queue depth 16 into a fresh disk, over 1 GiB;
#   rewrites: the same over the first 64 MiB, written whole before;
#   4 KiB random reads at depth 16 and 1 MiB sequential reads at depth 4.
# Each job runs ROUNDS times, the sides taking turns, on a fresh disk each round (a reset;
# tgt's plain file stays); the table shows each side's median and the ratios' range. The
# file system's own ceiling for the writes is measured beside them: fio writing a fresh
# clone directly, one pwrite at a time as cowctl's session does (no network, no protocol).
# Then the boot storm (scripts/bench/boot-storm.c: 300 MiB read + 50 MiB of 64 KiB writes
# and a SYNCHRONIZE CACHE per PC) at 1, 10 and 50 PCs on clones and on COWs, ROUNDS times,
# beside the storm's writes done by fio on the file system alone (into clones, and appended
# to new files as a COW's chunks are);
# one reset's pause after 16, 256 and 768 MiB written; and `cowctl status` of a room of 200
# PCs with 20 GiB disks, each holding 256 blocks of its own (served, and not served) and one
# reset's pause on such a disk. Prints tables with ratios. Not part of the tests.
#   scripts/bench-reflink.sh          (RUNTIME=8 seconds per job, ROUNDS=3, BENCH_FS=xfs)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runtime=${RUNTIME:-8}
rounds=${ROUNDS:-3}
fs=${BENCH_FS:-xfs}
scripts/provision.sh --tests >/dev/null
cargo build --release --quiet --bins
cowctl=$repo/target/release/cowctl
work=$(mktemp -d /var/tmp/cowctl-bench-reflink.XXXXXX)
gcc -O2 -Wall -o "$work/iscsi-bench" scripts/bench/iscsi-bench.c -liscsi
gcc -O2 -Wall -pthread -o "$work/boot-storm" scripts/bench/boot-storm.c -liscsi
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

# room NAME STORAGE CHUNK PCS GOLDEN [NAMES]: a room in $mnt/NAME of PCS iSCSI PCs (pc-1 … pc-N,
# or pc-001 … with NAMES=padded) on GOLDEN, applied; sets url (the first PC's), prefix (the
# PCs' URL before their number) and room_dir.
room() {
    local name=$1 storage=$2 chunk=$3 pcs=$4 golden=$5 port nbd first=pc-1 names="pc-{1..$4}"
    if [[ ${6:-} == padded ]]; then
        names="pc-{001..$(printf %03d "$pcs")}"
        first=pc-001
    fi
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
  - name: $names
YAML
    in_room "$room_dir" apply >/dev/null
    prefix=iscsi://127.0.0.1:$port/iqn.2024-01.lan.bench:pc-
    url=iscsi://127.0.0.1:$port/iqn.2024-01.lan.bench:$first/0
}

in_room() {
    local dir=$1
    shift
    COWCTL_RUN_DIR=$dir/run COWCTL_MANIFEST=$dir/room.yaml "$cowctl" "$@"
}

# Each job's IOPS and MB/s per side, one "iops:mbps" per round.
declare -A runs pause
bench() { # side job iscsi-bench-args…
    local side=$1 job=$2 i m
    shift 2
    read -r i m < <("$work/iscsi-bench" "$@")
    runs[$side-$job]+="$i:$m "
}
# fio_alone JOB ARGS…: fio on the file system itself, one pwrite at a time; prints "IOPS MB/s".
fio_alone() {
    fio --name=alone --filename="$mnt/alone.img" --bs=4k --ioengine=psync --time_based \
        --runtime="$runtime" --output-format=json "$@" | python3 -c '
import json, sys
w = json.load(sys.stdin)["jobs"][0]["write"]
print(round(w["iops"]), round(w["bw_bytes"] / 1e6))'
}
run_jobs() {
    local side=$1 url=$2 i m
    if [[ $side == fs ]]; then
        rm -f "$mnt/alone.img"
        cp --reflink=always "$mnt/golden.img" "$mnt/alone.img"
        sync
        read -r i m < <(fio_alone --rw=randwrite --size=1g)
        runs[fs-first]+="$i:$m "
        dd if=/dev/zero of="$mnt/alone.img" bs=1M count=64 conv=notrunc,fdatasync status=none
        read -r i m < <(fio_alone --rw=randwrite --size=64m)
        runs[fs-rewrite]+="$i:$m "
        return
    fi
    bench "$side" first "$url" randwrite 4096 16 "$runtime"
    qemu-io -f raw -c "write -P 0x5a 0 64M" "$url" >/dev/null
    bench "$side" rewrite "$url" randwrite 4096 16 "$runtime" 64
    bench "$side" randread "$url" randread 4096 16 "$runtime"
    bench "$side" seqread "$url" seqread 1048576 4 "$runtime"
    echo "bench-reflink: $side: first writes ${runs[$side-first]}/ rewrites ${runs[$side-rewrite]}/ reads ${runs[$side-randread]}/ ${runs[$side-seqread]}(IOPS:MB/s)" >&2
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

declare -A urls dirs
for side in reflink cow32 cow4; do
    case $side in
        reflink) room "$side" reflink 32KiB 1 "$mnt/golden.img" ;;
        cow32) room "$side" cow 32KiB 1 "$mnt/golden.img" ;;
        cow4) room "$side" cow 4KiB 1 "$mnt/golden.img" ;;
    esac
    urls[$side]=$url
    dirs[$side]=$room_dir
done
start_tgt "$mnt/plain.img" iqn.2024-01.lan.bench:tgt "$work/tgtd.log"
urls[tgt]=$tgt_url
sides=(reflink cow32 cow4 tgt fs)
for round in $(seq "$rounds"); do
    echo "bench-reflink: round $round of $rounds" >&2
    # The sides take turns in a new order each round, so none always runs first or last.
    shift_by=$(((round - 1) % ${#sides[@]}))
    order=("${sides[@]:shift_by}" "${sides[@]:0:shift_by}")
    for side in "${order[@]}"; do
        if [[ $round -gt 1 && -n ${dirs[$side]:-} ]]; then
            in_room "${dirs[$side]}" reset pc-1 >/dev/null # a fresh disk for the first writes
        fi
        run_jobs "$side" "${urls[$side]:-}"
    done
done
stop_tgt
for side in reflink cow32 cow4; do
    pauses "$side" "${dirs[$side]}" "${urls[$side]}"
    in_room "${dirs[$side]}" down >/dev/null
done
rm -f "$mnt/alone.img"

# The boot storm, clones against COWs of 32 KiB chunks, ROUNDS times at each size.
declare -A storms
for side in reflink cow32; do
    storage=reflink
    [[ $side == cow32 ]] && storage=cow
    room "storm-$side" "$storage" 32KiB 50 "$mnt/golden.img" padded
    dirs[storm-$side]=$room_dir
    urls[storm-$side]=$prefix
done
storm() { # side n: prints the last PC's time in seconds
    rm -f "$work/ready" "$work/go"
    "$work/boot-storm" "${urls[storm-$1]}" 1 "$2" 0 300 50 "$work/ready" "$work/go" >"$work/out" &
    local client=$!
    while [[ ! -e $work/ready ]]; do
        kill -0 "$client" 2>/dev/null || { wait "$client" || true; echo "bench-reflink: the storm of $2 PCs on $1 failed" >&2; exit 1; }
        sleep 0.1
    done
    touch "$work/go"
    wait "$client"
    read -r t _ <"$work/out"
    echo "$t"
}
# storm_writes_alone MODE N: the storm's writes on the file system alone, in seconds: N fio
# writers, each 50 MiB of 64 KiB writes and an fsync, scattered over a fresh clone of the
# image (MODE clone) or appended to a new file (MODE append, as a COW's chunks go).
storm_writes_alone() {
    local mode=$1 n=$2 args=() t
    rm -rf "$mnt/alone" && mkdir "$mnt/alone"
    for i in $(seq "$n"); do
        [[ $mode == clone ]] && cp --reflink=always "$mnt/golden.img" "$mnt/alone/$i"
        args+=(--name="w$i" --filename="$mnt/alone/$i")
    done
    sync
    t=$(date +%s%N)
    if [[ $mode == clone ]]; then
        fio --rw=randwrite --bs=64k --size=1g --io_size=50m --ioengine=psync --end_fsync=1 "${args[@]}" >/dev/null
    else
        fio --rw=write --bs=64k --size=50m --ioengine=psync --end_fsync=1 "${args[@]}" >/dev/null
    fi
    python3 -c "print(round(($(date +%s%N) - $t) / 1e9, 3))"
    rm -rf "$mnt/alone"
}
for n in 1 10 50; do
    for round in $(seq "$rounds"); do
        order=(reflink cow32)
        ((round % 2)) || order=(cow32 reflink)
        for side in "${order[@]}"; do
            in_room "${dirs[storm-$side]}" reset --all >/dev/null
            sync # no round inherits the write-back of the one before
            storms[$side-$n]+="$(storm "$side" "$n") "
        done
        for mode in clone append; do storms[alone-$mode-$n]+="$(storm_writes_alone "$mode" "$n") "; done
    done
    echo "bench-reflink: storm of $n PCs: clones ${storms[reflink-$n]}s, COWs ${storms[cow32-$n]}s; $fs alone: ${storms[alone-clone-$n]}s into clones, ${storms[alone-append-$n]}s appended" >&2
done
for side in reflink cow32; do in_room "${dirs[storm-$side]}" down >/dev/null; done

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
declare -A apply200 status200 offline200 first200 pause20
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
        # Settled (a count made now is kept): the first look counts every clone's extents,
        # the next ones read the kept counts back.
        sleep 2.5
        t=$(date +%s%N)
        in_room "$room_dir" status >/dev/null
        first200[$side]=$((($(date +%s%N) - t) / 1000000))
        offline200[$side]=$(status_ms "$room_dir")
        in_room "$room_dir" apply >/dev/null
    fi
    status200[$side]=$(status_ms "$room_dir")
    # One reset's pause on a 20 GiB disk (pc-1, served, with what it holds of its own).
    pause20[$side]=$(in_room "$room_dir" --json reset pc-1 | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["seconds"] * 1000, 1))')
    in_room "$room_dir" down >/dev/null
    if [[ $side == cow32 ]]; then
        offline200[$side]=$(status_ms "$room_dir")
        first200[$side]=${offline200[$side]}
    fi
done

ratio() { python3 -c "print(f'{$1 / max($2, 0.1):.2f}×')"; }
echo
for key in "${!runs[@]}"; do echo "$key ${runs[$key]}"; done >"$work/runs"
for key in "${!storms[@]}"; do echo "$key ${storms[$key]}"; done >"$work/storms"
python3 - "$work/runs" "$work/storms" "$fs" "$runtime" "$rounds" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    key, *cells = line.split()
    runs[key] = [tuple(float(x) for x in c.split(":")) for c in cells]
storms = {}
for line in open(sys.argv[2]):
    key, *times = line.split()
    storms[key] = [float(t) for t in times]
fs, runtime, rounds = sys.argv[3], sys.argv[4], sys.argv[5]
med = statistics.median

def cell(side, job):
    r = runs.get(f"{side}-{job}")
    if not r:
        return "—"
    return f"{med(i for i, _ in r):,.0f} IOPS, {med(m for _, m in r):,.0f} MB/s"

def ratio(a, b, job, higher=True):
    ra, rb = runs.get(f"{a}-{job}"), runs.get(f"{b}-{job}")
    if not ra or not rb:
        return "—"
    each = sorted(x[0] / max(y[0], 0.1) for x, y in zip(ra, rb))
    m = med(x[0] for x in ra) / max(med(y[0] for y in rb), 0.1)
    return f"{m:.2f}× ({each[0]:.2f}–{each[-1]:.2f})" if len(each) > 1 else f"{m:.2f}×"

labels = {
    "first": "4 KiB random write qd16, fresh disk (first writes)",
    "rewrite": "4 KiB random write qd16, written blocks (rewrites)",
    "randread": "4 KiB random read qd16",
    "seqread": "1 MiB sequential read qd4",
}
print(f"| iSCSI, iscsi-bench on {fs} ({runtime} s per job, median of {rounds} rounds) | reflink clone | COW, 32 KiB chunks | COW, 4 KiB chunks | tgt, plain file | {fs} alone: fio on a fresh clone, one pwrite at a time | reflink ÷ COW 32 KiB (range) | reflink ÷ COW 4 KiB (range) | reflink ÷ tgt (range) | reflink ÷ {fs} alone |")
print("|---|---|---|---|---|---|---|---|---|---|")
for job, label in labels.items():
    cells = [cell(s, job) for s in ("reflink", "cow32", "cow4", "tgt", "fs")]
    ratios = [ratio("reflink", s, job) for s in ("cow32", "cow4", "tgt", "fs")]
    print(f"| {label} | " + " | ".join(cells + ratios) + " |")
print()
print(f"| boot storm on {fs}, N PCs at once (300 MiB read + 50 MiB written each; median of {rounds} rounds) | clones: last PC done | COWs, 32 KiB chunks: last PC done | clones ÷ COWs, time (range) | {fs} alone, the writes only (fio): into N clones | {fs} alone: appended to N new files | {fs} alone: clones ÷ appends |")
print("|---|---|---|---|---|---|---|")
for n in (1, 10, 50):
    c, w = storms.get(f"reflink-{n}"), storms.get(f"cow32-{n}")
    a, b = storms.get(f"alone-clone-{n}"), storms.get(f"alone-append-{n}")
    each = sorted(x / y for x, y in zip(c, w))
    print(f"| {n} | {med(c):.3f} s | {med(w):.3f} s | {med(c) / med(w):.2f}× ({each[0]:.2f}–{each[-1]:.2f}) | {med(a):.3f} s | {med(b):.3f} s | {med(a) / med(b):.2f}× |")
print()
PY
echo "| one PC | reflink clone | COW, 32 KiB chunks | COW, 4 KiB chunks |"
echo "|---|---|---|---|"
echo "| one reset's pause after 16 / 256 / 768 MiB written | ${pause[reflink]} | ${pause[cow32]} | ${pause[cow4]} |"
echo
echo "| 200 PCs, 20 GiB disks | reflink clones | COW files, 32 KiB chunks | reflink ÷ COW |"
echo "|---|---|---|---|"
echo "| one reset's pause, a 20 GiB disk | ${pause20[reflink]} ms | ${pause20[cow32]} ms | $(ratio "${pause20[reflink]}" "${pause20[cow32]}") |"
echo "| apply (200 new disks) | ${apply200[reflink]} ms | ${apply200[cow32]} ms | $(ratio "${apply200[reflink]}" "${apply200[cow32]}") |"
echo "| status, served (median of 3) | ${status200[reflink]} ms | ${status200[cow32]} ms | $(ratio "${status200[reflink]}" "${status200[cow32]}") |"
echo "| status, not served, first look (FIEMAP per disk / COW header) | ${first200[reflink]} ms | ${first200[cow32]} ms | $(ratio "${first200[reflink]}" "${first200[cow32]}") |"
echo "| status, not served, next looks (counts kept in the run directory; median of 3) | ${offline200[reflink]} ms | ${offline200[cow32]} ms | $(ratio "${offline200[reflink]}" "${offline200[cow32]}") |"
