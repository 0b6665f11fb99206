#!/usr/bin/env bash
# The kernel backend at room scale, in the test VM: cowctl apply, apply again, status (room
# and one PC), one reset's pause, reset --all and down for 10, 50, 100 and 200 iSCSI PCs,
# against the same steps done by hand in a shell script in the same run. Prints a table.
# Several minutes under qemu's TCG; not part of the tests.
#   BENCH_ROOM_SIZES="10 200" scripts/bench-room.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --quiet --bins
COWCTL_VM_MEM=${COWCTL_VM_MEM:-4096} COWCTL_VM_TIMEOUT=${COWCTL_VM_TIMEOUT:-2400} \
    scripts/vm.sh run env BENCH_ROOM_SIZES="${BENCH_ROOM_SIZES:-10 50 100 200}" scripts/vm/bench-room-guest.sh |
    sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a --line-buffered -e '^bench' -e '^|'
