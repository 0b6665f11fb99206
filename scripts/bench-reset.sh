#!/usr/bin/env bash
# Measures `cowctl reset` of a PC that is applied and exported, for a 200 MiB and a 20 GiB
# COW filled to about 90 % through the kernel, on ext4 in the test VM. Prints a table.
# Takes several minutes (the 20 GiB fill runs under qemu's TCG); not part of the tests.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --quiet
COWCTL_VM_SCRATCH_GB=${COWCTL_VM_SCRATCH_GB:-24} COWCTL_VM_TIMEOUT=${COWCTL_VM_TIMEOUT:-3000} \
    scripts/vm.sh run scripts/vm/bench-reset-guest.sh "$@" | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a -e '^bench' -e '^|' -e 'cowctl:'
