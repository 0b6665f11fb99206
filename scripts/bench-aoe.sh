#!/usr/bin/env bash
# Benchmarks cowctl's userspace AoE target against vblade in the test VM, through the
# kernel's aoe driver (scripts/vm/bench-aoe-guest.sh). Prints a table with ratios.
#   scripts/bench-aoe.sh      (BENCH_AOE_MB=512 BENCH_AOE_SECONDS=15 BENCH_AOE_CHUNK_KIB=32,
#                             BENCH_AOE_JOBS="randread seqread randwrite rewrite")
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --quiet --bins
export BENCH_AOE_MB=${BENCH_AOE_MB:-512} BENCH_AOE_SECONDS=${BENCH_AOE_SECONDS:-15} BENCH_AOE_ROUNDS=${BENCH_AOE_ROUNDS:-2} BENCH_AOE_CHUNK_KIB=${BENCH_AOE_CHUNK_KIB:-32} BENCH_AOE_JOBS=${BENCH_AOE_JOBS:-randread seqread randwrite rewrite}
COWCTL_VM_MEM=${COWCTL_VM_MEM:-8192} COWCTL_VM_TIMEOUT=${COWCTL_VM_TIMEOUT:-1800} \
    scripts/vm.sh run env BENCH_AOE_MB="$BENCH_AOE_MB" BENCH_AOE_SECONDS="$BENCH_AOE_SECONDS" BENCH_AOE_ROUNDS="$BENCH_AOE_ROUNDS" BENCH_AOE_CHUNK_KIB="$BENCH_AOE_CHUNK_KIB" BENCH_AOE_JOBS="$BENCH_AOE_JOBS" \
    scripts/vm/bench-aoe-guest.sh | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a -e '^bench' -e '^|'
