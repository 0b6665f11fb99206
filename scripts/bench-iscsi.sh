#!/usr/bin/env bash
# cowctl serve's userspace iSCSI target against tgt (Debian tgt, a userspace iSCSI target)
# serving the raw golden image with no COW (the ceiling), in one run, with the same clients:
# scripts/bench/iscsi-bench.c (libiscsi, one session, N commands in flight) for 4 KiB
# random writes and reads at queue depth 16 and 1 MiB sequential reads at depth 4, and
# libiscsi's own iscsi-perf for 4 KiB random reads at depth 16. cowctl starts from an empty
# COW over a 1 GiB golden image of random data; random reads cover what it wrote and the
# golden image. Prints a table with ratios.
#   scripts/bench-iscsi.sh            (RUNTIME=10 seconds per job, CHUNK=32KiB for cowctl)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runtime=${RUNTIME:-10}
chunk=${CHUNK:-32KiB}
scripts/provision.sh --tests >/dev/null
cargo build --release --quiet --bins
work=$(mktemp -d /var/tmp/cowctl-bench.XXXXXX)
gcc -O2 -Wall -o "$work/iscsi-bench" scripts/bench/iscsi-bench.c -liscsi
source scripts/lib/iscsi.sh
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
cleanup() {
    target/release/cowctl down >/dev/null 2>&1 || true
    stop_tgt
    rm -rf "$work"
}
trap cleanup EXIT

echo "bench-iscsi: making a 1 GiB golden image of random data in $work" >&2
head -c $((1 << 30)) /dev/urandom >"$work/golden.img"
serve_room "$work" iqn.2024-01.lan.bench pc 2GiB "$chunk"
cp --sparse=always "$work/golden.img" "$work/raw.img"
start_tgt "$work/raw.img" iqn.2024-01.lan.bench:tgt "$work/tgtd.log"

jobs=("randwrite 4096 16" "randread 4096 16" "seqread 1048576 4")
declare -A iops mbps
for side in cowctl tgt; do
    url=${side}_url
    for job in "${jobs[@]}"; do
        set -- $job
        read -r iops[$side-$1] mbps[$side-$1] < <("$work/iscsi-bench" "${!url}" "$1" "$2" "$3" "$runtime")
        echo "bench-iscsi: $side $1 bs=$2 qd=$3: ${iops[$side-$1]} IOPS" >&2
    done
    iops[$side-perf]=$(timeout $((runtime + 5)) iscsi-perf -m 16 -b 8 -r "${!url}" 2>/dev/null | tr '\r' '\n' |
        sed -n 's/.*iops average \([0-9]*\).*/\1/p' | tail -1 || true)
    echo "bench-iscsi: $side iscsi-perf randread: ${iops[$side-perf]} IOPS" >&2
done

ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}×')"; }
fmt() { python3 -c "print(f'{int($1):,}')"; }
echo
echo "| job | cowctl | tgt (raw file, no COW) | cowctl ÷ tgt |"
echo "|---|---|---|---|"
for job in "${jobs[@]}"; do
    set -- $job
    label="4 KiB $1 qd$3"
    [[ $1 == seqread ]] && label="1 MiB seq read qd$3"
    echo "| $label (iscsi-bench) | $(fmt "${iops[cowctl-$1]}") IOPS, $(fmt "${mbps[cowctl-$1]}") MB/s | $(fmt "${iops[tgt-$1]}") IOPS, $(fmt "${mbps[tgt-$1]}") MB/s | $(ratio "${iops[cowctl-$1]}" "${iops[tgt-$1]}") |"
done
echo "| 4 KiB randread qd16 (iscsi-perf) | $(fmt "${iops[cowctl-perf]:-0}") IOPS | $(fmt "${iops[tgt-perf]:-0}") IOPS | $(ratio "${iops[cowctl-perf]:-0}" "${iops[tgt-perf]:-0}") |"
