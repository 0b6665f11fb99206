#!/usr/bin/env bash
# The dashboard under load: 200 PCs, 20 browsers on the live view, a reset a second; prints
# each API route's p50/p99 against the 100 ms target and the service's memory growth against
# the fill history's cost. Exits 1 outside the targets. Not part of the tests (timing).
#   BENCH_DASH_PCS=200 BENCH_DASH_BROWSERS=20 BENCH_DASH_SECONDS=60 scripts/bench-dashboard.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --quiet --bins
python3 scripts/bench/dashboard-load.py "$repo/target/release/cowctl"
