#!/usr/bin/env bash
# The same fio jobs (nbd engine, loopback) against four NBD servers over one 1 GiB golden
# image: cowctl serve, qemu-nbd with a qcow2 overlay backed by the raw image, nbdkit with
# its cow filter, and nbdkit serving a copy of the raw image with no COW (the ceiling).
# Each server starts from an empty overlay and runs: 4 KiB randwrite qd16, 4 KiB randread
# qd16 (over what it wrote and the golden image), 1 MiB sequential read qd4.
#   scripts/bench-nbd.sh            (RUNTIME=10 seconds per job, CHUNK=32KiB for cowctl, the manifest default)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runtime=${RUNTIME:-10}
chunk=${CHUNK:-32KiB}
scripts/provision.sh --tests >/dev/null
cargo build --release --quiet
work=$(mktemp -d /var/tmp/cowctl-bench.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    COWCTL_RUN_DIR=$work/run target/release/cowctl -f "$work/room.yaml" down >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench-nbd: making a 1 GiB golden image of random data in $work" >&2
head -c $((1 << 30)) /dev/urandom >"$work/golden.img"
port=10931

run_jobs() { # name uri
    local name=$1 uri=$2 job
    for job in "randwrite 4k 16" "randread 4k 16" "read 1m 4"; do
        set -- $job
        fio --name="$name" --ioengine=nbd --uri="$uri" --rw="$1" --bs="$2" --iodepth="$3" \
            --size=1g --time_based --runtime="$runtime" --ramp_time=2 --numjobs=1 \
            --output-format=json 2>/dev/null | sed -n '/^{/,$p' >"$work/$name-$1.json"
        echo "bench-nbd: $name $1 bs=$2 qd=$3 done" >&2
    done
}

wait_port() {
    for _ in $(seq 100); do nbdinfo --size "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done
    echo "bench-nbd: no server at $1" >&2
    return 1
}

# cowctl: the userspace backend, commit at flush, chunk $chunk.
cat >"$work/room.yaml" <<EOF
backend: userspace
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work
  cow_size: 2GiB
  chunk: $chunk
  export: nbd
nbd:
  listen: 127.0.0.1:$port
  socket: $work/run/nbd.sock
pcs:
  - name: pc
EOF
COWCTL_RUN_DIR=$work/run target/release/cowctl -f "$work/room.yaml" apply >/dev/null
run_jobs cowctl "nbd://127.0.0.1:$port/pc"
COWCTL_RUN_DIR=$work/run target/release/cowctl -f "$work/room.yaml" down >/dev/null

# qemu-nbd over a qcow2 overlay (default 64 KiB clusters, write-back cache).
port=$((port + 1))
qemu-img create -q -f qcow2 -F raw -b "$work/golden.img" "$work/overlay.qcow2"
qemu-nbd -f qcow2 -b 127.0.0.1 -p "$port" -x pc --persistent --shared=8 "$work/overlay.qcow2" &
pids+=($!)
wait_port "nbd://127.0.0.1:$port/pc"
run_jobs qemu-nbd "nbd://127.0.0.1:$port/pc"
kill "${pids[-1]}"

# nbdkit with the cow filter over the raw image (default 64 KiB blocks).
port=$((port + 1))
nbdkit -f -i 127.0.0.1 -p "$port" --filter=cow file "$work/golden.img" &
pids+=($!)
wait_port "nbd://127.0.0.1:$port"
run_jobs nbdkit-cow "nbd://127.0.0.1:$port"
kill "${pids[-1]}"

# The ceiling: nbdkit's file plugin on a copy of the raw image, no COW at all.
port=$((port + 1))
cp --sparse=never "$work/golden.img" "$work/raw.img"
nbdkit -f -i 127.0.0.1 -p "$port" file "$work/raw.img" &
pids+=($!)
wait_port "nbd://127.0.0.1:$port"
run_jobs nbdkit-raw "nbd://127.0.0.1:$port"
kill "${pids[-1]}"

python3 - "$work" "$chunk" "$runtime" <<'EOF'
import json, sys
work, chunk, runtime = sys.argv[1], sys.argv[2], sys.argv[3]
servers = ["cowctl", "qemu-nbd", "nbdkit-cow", "nbdkit-raw"]
jobs = [("randwrite", "write", "4 KiB randwrite qd16"), ("randread", "read", "4 KiB randread qd16"),
        ("read", "read", "1 MiB seq read qd4")]
def result(server, job, side):
    j = json.load(open(f"{work}/{server}-{job}.json"))["jobs"][0][side]
    return j["iops"], j["bw_bytes"] / 1e6
print(f"fio nbd engine on loopback, 1 GiB golden image, {runtime} s per job; cowctl chunk {chunk}")
print(f"| job | " + " | ".join(servers) + " | cowctl ÷ best COW peer | cowctl ÷ ceiling |")
print("|---|" + "---|" * (len(servers) + 2))
for job, side, label in jobs:
    r = {s: result(s, job, side) for s in servers}
    cells = [f"{r[s][0]:,.0f} IOPS, {r[s][1]:,.0f} MB/s" for s in servers]
    best = max(r["qemu-nbd"][0], r["nbdkit-cow"][0])
    print(f"| {label} | " + " | ".join(cells) + f" | {r['cowctl'][0] / best:.2f}× | {r['cowctl'][0] / r['nbdkit-raw'][0]:.2f}× |")
EOF
