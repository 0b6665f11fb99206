#!/usr/bin/env bash
# Fuzzes every wire parser a client or a file reaches (benches/fuzz.rs): the NBD handshake
# and transmission phase, the iSCSI PDU reader, login and session, the AoE target, the COW store loader.
# FUZZ_EXECS executions per target (default 10^6); prints a table; fails on any crash or
# I/O outside a disk. Crashing inputs are kept in test-outputs/fuzz/.
#   scripts/fuzz.sh [TARGET-SUBSTRING]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export FUZZ_EXECS=${FUZZ_EXECS:-1000000}
cargo bench --quiet --bench fuzz -- "$@"
