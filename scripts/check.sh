#!/usr/bin/env bash
# The quick gate before a commit: format, lints and the host tests (no VM).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --release --quiet 2>&1 | grep -E "^test result|FAILED|panicked" | awk '
    /test result/ { p += $4; f += $6 } /FAILED|panicked/ { bad = 1; print }
    END { print "check: " p " passed, " f " failed"; exit (bad || f) ? 1 : 0 }'
