#!/usr/bin/env bash
# In the test VM (scripts/bench-aoe.sh): cowctl's userspace AoE target against vblade
# serving a raw copy of the same golden image, both through the kernel's aoe driver on a
# veth pair with 9000-byte frames, measured one after the other in this run with fio:
# 4 KiB random read and write at queue depth 16, 1 MiB sequential read at depth 4.
# cowctl's PC starts on a fresh COW, so its random writes allocate chunks as a PC's do.
set -euo pipefail
repo=${COWCTL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cowctl=$repo/target/release/cowctl
mb=${BENCH_AOE_MB:-512}
seconds=${BENCH_AOE_SECONDS:-15}
work=$(mktemp -d)
ip link add cwbt mtu 9000 type veth peer name cwbi mtu 9000
ip link set cwbt up
ip link set cwbi up
modprobe aoe aoe_iflist=cwbi
head -c "${mb}M" /dev/urandom >"$work/golden.img"
cp "$work/golden.img" "$work/vblade.img"

wait_disk() {
    for _ in $(seq 60); do
        [[ -b $1 ]] && return 0
        aoe-discover
        sleep 0.5
    done
    echo "bench-aoe: $1 never appeared" >&2
    exit 1
}

declare -A iops mbps
run_fio() { # target job device
    local rw bs depth
    case $2 in
        randread) rw=randread bs=4k depth=16 ;;
        randwrite) rw=randwrite bs=4k depth=16 ;;
        seqread) rw=read bs=1M depth=4 ;;
    esac
    fio --name="$1-$2" --filename="$3" --direct=1 --ioengine=libaio --rw=$rw --bs=$bs \
        --iodepth=$depth --runtime="$seconds" --time_based --output-format=json >"$work/$1-$2.json"
    read -r iops["$1-$2"] mbps["$1-$2"] < <(python3 -c '
import json, sys
j = json.load(open(sys.argv[1]))["jobs"][0]
side = j["write"] if sys.argv[2] == "randwrite" else j["read"]
print(round(side["iops"]), round(side["bw_bytes"] / 1e6))' "$work/$1-$2.json" "$2")
    echo "bench-aoe: $1 $2: ${iops[$1-$2]} IOPS, ${mbps[$1-$2]} MB/s" >&2
}

jobs=(randread seqread randwrite)
# vblade (Debian's package) serving the raw file as e1.1.
vblade 1 1 cwbt "$work/vblade.img" >"$work/vblade.log" 2>&1 &
vblade_pid=$!
wait_disk /dev/etherd/e1.1
for j in "${jobs[@]}"; do run_fio vblade "$j" /dev/etherd/e1.1; done
kill "$vblade_pid"
wait "$vblade_pid" 2>/dev/null || true
aoe-flush -a || true

# cowctl serve with one PC as e2.1 on a fresh COW over the golden image.
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
  cow_size: ${mb}MiB
  chunk: 32KiB
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
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
"$cowctl" apply >/dev/null
wait_disk /dev/etherd/e2.1
for j in "${jobs[@]}"; do run_fio cowctl "$j" /dev/etherd/e2.1; done
"$cowctl" down >/dev/null
aoe-flush -a || true
rmmod aoe || true

ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}×')"; }
fmt() { python3 -c "print(f'{$1:,}')"; }
echo "| fio through the kernel's aoe driver ($mb MiB, MTU 9000, ${seconds} s each) | cowctl serve | vblade | cowctl / vblade |"
echo "|---|---|---|---|"
for j in "${jobs[@]}"; do
    case $j in
        randread) label="4 KiB random read, qd16" ;;
        randwrite) label="4 KiB random write, qd16 (fresh COW)" ;;
        seqread) label="1 MiB sequential read, qd4" ;;
    esac
    echo "| $label | $(fmt "${iops[cowctl-$j]}") IOPS, $(fmt "${mbps[cowctl-$j]}") MB/s | $(fmt "${iops[vblade-$j]}") IOPS, $(fmt "${mbps[vblade-$j]}") MB/s | $(ratio "${iops[cowctl-$j]}" "${iops[vblade-$j]}") |"
done
rm -rf "$work"
