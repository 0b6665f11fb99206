#!/usr/bin/env bash
# In the test VM (scripts/bench-aoe.sh): cowctl's userspace AoE target against vblade
# serving a raw copy of the same golden image, both through the kernel's aoe driver on a
# veth pair with 9000-byte frames, and vblade over a dm-snapshot (what the kernel backend
# serves), measured one after the other in this run with fio:
# 4 KiB random read and write at queue depth 16, 1 MiB sequential read at depth 4.
# cowctl's PC starts each round on a fresh COW, so its random writes allocate chunks (and
# copy the rest of a chunk from the golden image for each) as a fresh PC's do. Chunks are
# 32 KiB (cowctl's default), or BENCH_AOE_CHUNK_KIB for both COW paths.
# The COWs are twice the disk, so random writes touching every chunk never fill one.
# Reflink storage too: cowctl serve with `storage: reflink` (the PC's disk a clone of the
# image on xfs made on a loop file) against vblade serving a plain copy on that same xfs and
# cowctl serve with a COW file on that same xfs (the first table's COW is on the VM's tmpfs,
# where a sync costs nothing).
set -euo pipefail
repo=${COWCTL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cowctl=$repo/target/release/cowctl
mb=${BENCH_AOE_MB:-512}
seconds=${BENCH_AOE_SECONDS:-15}
chunk_kib=${BENCH_AOE_CHUNK_KIB:-32}
work=$(mktemp -d)
ip link add cwbt mtu 9000 type veth peer name cwbi mtu 9000
ip link set cwbt up
ip link set cwbi up
modprobe aoe aoe_iflist=cwbi
modprobe loop
modprobe dm-snapshot
head -c "${mb}M" /dev/urandom >"$work/golden.img"
cp "$work/golden.img" "$work/vblade.img"
truncate -s "$((8 * mb))M" "$work/xfs.img"
mkfs.xfs -q -f -m reflink=1 "$work/xfs.img"
mkdir "$work/x"
mount -o loop "$work/xfs.img" "$work/x"
cp "$work/golden.img" "$work/x/golden.img"
cp "$work/golden.img" "$work/x/vblade.img"
mkdir "$work/x/disks" "$work/x/cow"

wait_disk() {
    for _ in $(seq 60); do
        [[ -b $1 ]] && return 0
        aoe-discover
        sleep 0.5
    done
    echo "bench-aoe: $1 never appeared" >&2
    tail -n 5 "$work"/vblade*.log "$work"/run/serve.log 2>/dev/null >&2 || true
    exit 1
}

run_fio() { # target job device
    local rw bs depth
    case $2 in
        randread) rw=randread bs=4k depth=16 ;;
        randwrite) rw=randwrite bs=4k depth=16 ;;
        rewrite) rw=randwrite bs=4k depth=16 ;;
        seqread) rw=read bs=1M depth=4 ;;
    esac
    local region=()
    if [[ $2 == rewrite ]]; then
        # The first 16 MiB written once (not measured), then rewritten at random.
        region=(--offset=0 --size=16M)
        fio --name=fill --filename="$3" --direct=1 --ioengine=libaio --rw=write --bs=1M \
            --iodepth=4 "${region[@]}" >/dev/null
    fi
    fio --name="$1-$2" --filename="$3" --direct=1 --ioengine=libaio --rw=$rw --bs=$bs \
        --iodepth=$depth "${region[@]}" --runtime="$seconds" --time_based --output-format=json >"$work/$1-$2.json"
    local out
    out=$(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["write"] if sys.argv[2].endswith("write") else j["read"]
print(round(side["iops"]), round(side["bw_bytes"] / 1e6))' "$work/$1-$2.json" "$2")
    local i=${out% *} m=${out#* }
    echo "$1 $2 $i $m" >>"$work/results"
    echo "bench-aoe: $1 $2: $i IOPS, $m MB/s" >&2
}

# BENCH_AOE_JOBS: a subset of the jobs, to look at one closely.
read -ra jobs <<<"${BENCH_AOE_JOBS:-randread seqread randwrite rewrite}"
for j in "${jobs[@]}"; do
    case $j in randread | seqread | randwrite | rewrite) ;; *) echo "bench-aoe: no job $j (BENCH_AOE_JOBS)" >&2; exit 2 ;; esac
done
rounds=${BENCH_AOE_ROUNDS:-2}
mac=$(cat /sys/class/net/cwbi/address)
mkdir "$work/cow"
cat >"$work/room.yaml" <<YAML
backend: userspace
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work/cow
  cow_size: $((2 * mb))MiB
  chunk: ${chunk_kib}KiB
aoe:
  interface: cwbt
nbd:
  listen: 127.0.0.1:10809
  socket: $work/nbd.sock
pcs:
  - name: pc-01
    export: aoe
    shelf: 2
    slot: 1
    mac: $mac
YAML
cat >"$work/room-reflink.yaml" <<YAML
backend: userspace
images:
  g:
    path: $work/x/golden.img
    storage: reflink
defaults:
  image: g
  cow_dir: $work/x/disks
  cow_size: $((2 * mb))MiB
aoe:
  interface: cwbt
nbd:
  listen: 127.0.0.1:10810
  socket: $work/nbd-reflink.sock
pcs:
  - name: pc-01
    export: aoe
    shelf: 4
    slot: 1
    mac: $mac
YAML
reflink_room() { COWCTL_RUN_DIR=$work/run-reflink COWCTL_MANIFEST=$work/room-reflink.yaml "$cowctl" "$@"; }
sed -e "s#$work/golden.img#$work/x/golden.img#" -e "s#cow_dir: $work/cow#cow_dir: $work/x/cow#" \
    -e "s#shelf: 2#shelf: 6#" -e "s#10809#10811#" -e "s#$work/nbd.sock#$work/nbd-xfs.sock#" \
    "$work/room.yaml" >"$work/room-xfs.yaml"
xfs_cow_room() { COWCTL_RUN_DIR=$work/run-xfs COWCTL_MANIFEST=$work/room-xfs.yaml "$cowctl" "$@"; }
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
# Rounds run the three targets one after another, only one at a time (each would wake for the
# other's frames); cowctl's PC gets a fresh COW each round.
for round in $(seq "$rounds"); do
    # vblade (Debian's package) serving the raw file as e1.1.
    vblade 1 1 cwbt "$work/vblade.img" >"$work/vblade.log" 2>&1 &
    vblade_pid=$!
    wait_disk /dev/etherd/e1.1
    for j in "${jobs[@]}"; do run_fio vblade "$j" /dev/etherd/e1.1; done
    kill "$vblade_pid"
    wait "$vblade_pid" 2>/dev/null || true

    # The kernel backend's way: vblade over a dm-snapshot of the golden image (loop
    # devices, a fresh COW file, 32 KiB chunks), as e3.1.
    rm -f "$work/kernel.cow"
    truncate -s "$((2 * mb))M" "$work/kernel.cow"
    golden_loop=$(losetup -f --show -r "$work/golden.img")
    cow_loop=$(losetup -f --show "$work/kernel.cow")
    dmsetup create cwbsnap --table "0 $((mb * 2048)) snapshot $golden_loop $cow_loop P $((chunk_kib * 2))"
    dmsetup mknodes cwbsnap # the VM runs no udev to make the node
    vblade 3 1 cwbt /dev/mapper/cwbsnap >"$work/vblade-dm.log" 2>&1 &
    vblade_pid=$!
    wait_disk /dev/etherd/e3.1
    for j in "${jobs[@]}"; do run_fio kernel "$j" /dev/etherd/e3.1; done
    kill "$vblade_pid"
    wait "$vblade_pid" 2>/dev/null || true
    dmsetup remove cwbsnap
    losetup -d "$golden_loop" "$cow_loop"
    rm -f "$work/kernel.cow"

    # cowctl serve with one PC as e2.1 over the golden image.
    "$cowctl" reset pc-01 >/dev/null 2>&1 || true
    "$cowctl" apply >/dev/null
    wait_disk /dev/etherd/e2.1
    for j in "${jobs[@]}"; do run_fio cowctl "$j" /dev/etherd/e2.1; done
    "$cowctl" down >/dev/null

    # vblade serving a plain copy on the xfs the clones are on, as e5.1.
    vblade 5 1 cwbt "$work/x/vblade.img" >"$work/vblade-xfs.log" 2>&1 &
    vblade_pid=$!
    wait_disk /dev/etherd/e5.1
    for j in "${jobs[@]}"; do run_fio vblade_xfs "$j" /dev/etherd/e5.1; done
    kill "$vblade_pid"
    wait "$vblade_pid" 2>/dev/null || true

    # cowctl serve with a fresh clone of the image on xfs, as e4.1.
    reflink_room reset pc-01 >/dev/null 2>&1 || true
    reflink_room apply >/dev/null
    wait_disk /dev/etherd/e4.1
    for j in "${jobs[@]}"; do run_fio reflink "$j" /dev/etherd/e4.1; done
    reflink_room down >/dev/null

    # cowctl serve with a fresh COW on that same xfs, as e6.1.
    xfs_cow_room reset pc-01 >/dev/null 2>&1 || true
    xfs_cow_room apply >/dev/null
    wait_disk /dev/etherd/e6.1
    for j in "${jobs[@]}"; do run_fio cowctl_xfs "$j" /dev/etherd/e6.1; done
    xfs_cow_room down >/dev/null
done
umount "$work/x" 
aoe-flush -a || true
rmmod aoe || true

# Per job and target, the median round; and the ratios of cowctl to each peer round by
# round (the targets of one round run minutes apart, so the machine's drift moves them
# together), as their median and range.
python3 - "$work/results" "$mb" "$chunk_kib" "$rounds" "$seconds" "${jobs[@]}" <<'PY'
import statistics, sys
path, mb, chunk, rounds, seconds, *jobs = sys.argv[1:]
runs = {}
for line in open(path):
    target, job, iops, mbps = line.split()
    runs.setdefault((target, job), []).append((int(iops), int(mbps)))
labels = {
    "randread": "4 KiB random read, qd16",
    "seqread": "1 MiB sequential read, qd4",
    "randwrite": "4 KiB random write, qd16, fresh COW",
    "rewrite": "4 KiB random write, qd16, rewriting written chunks",
}
def cell(target, job):
    iops, mbps = sorted(runs[(target, job)])[len(runs[(target, job)]) // 2]
    return f"{iops:,} IOPS, {mbps:,} MB/s"
def ratio(job, peer, ours="cowctl"):
    r = [c[0] / max(p[0], 1) for c, p in zip(runs[(ours, job)], runs[(peer, job)])]
    return f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})"
print(f"| fio through the kernel's aoe driver ({mb} MiB, MTU 9000, {chunk} KiB chunks, median of {rounds} rounds × {seconds} s) | cowctl serve | vblade, raw file | cowctl ÷ vblade, median (range) | vblade over dm-snapshot (kernel backend) | cowctl ÷ dm-snapshot, median (range) |")
print("|---|---|---|---|---|---|")
for j in jobs:
    print(f"| {labels[j]} | {cell('cowctl', j)} | {cell('vblade', j)} | {ratio(j, 'vblade')} | {cell('kernel', j)} | {ratio(j, 'kernel')} |")
print()
print(f"| reflink storage on xfs ({mb} MiB, median of {rounds} rounds × {seconds} s) | cowctl serve, a fresh clone | vblade, plain file on the same xfs | clone ÷ vblade, median (range) | cowctl serve, COW ({chunk} KiB chunks) on the same xfs | clone ÷ COW, median (range) |")
print("|---|---|---|---|---|---|")
for j in jobs:
    label = labels[j].replace("fresh COW", "fresh disk").replace("written chunks", "written blocks")
    print(f"| {label} | {cell('reflink', j)} | {cell('vblade_xfs', j)} | {ratio(j, 'vblade_xfs', 'reflink')} | {cell('cowctl_xfs', j)} | {ratio(j, 'cowctl_xfs', 'reflink')} |")
PY
rm -rf "$work"
