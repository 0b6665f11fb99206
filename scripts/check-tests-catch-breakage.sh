#!/usr/bin/env bash
# Shows that the tests can fail: copies the repository, breaks the engine's on-disk format
# on purpose (the metadata area is written one chunk off), and runs the kernel suite in the
# VM and the host format tests on the broken copy. Passes only if both FAIL.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mkdir -p "$repo/target"
work=$(mktemp -d "$repo/target/mutant-src.XXXXXX")
trap 'rm -rf "$work"' EXIT
git -C "$repo" ls-files -z --cached --others --exclude-standard | (cd "$repo" && xargs -0 cp --parents -t "$work")
target=src/engine/metadata.rs
from='let area_offset = g.offset(g.area_location(inner.current_area));'
to='let area_offset = g.offset(g.area_location(inner.current_area) + 1);'
grep -qF "$from" "$work/$target" || { echo "mutation site not found in $target" >&2; exit 1; }
sed -i "s|$from|$to|" "$work/$target"
# Without debug info: this copy is built only to fail, and its size counts against the disk.
export CARGO_TARGET_DIR=$repo/target/mutant COWCTL_VM_CACHE=$repo/vm-cache CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_DEV_DEBUG=false
cd "$work"
verdict=0
# A failure counts only if a test ran and an assertion failed (not a build error).
expect_failure() {
    local name=$1; shift
    if "$@" >"$work/$name.log" 2>&1; then
        echo "$name PASSED on a broken format" >&2; verdict=1
    elif grep -aq "panicked at" "$work/$name.log"; then
        echo "$name fail on the broken format, as they must:"
        grep -a -A1 "panicked at" "$work/$name.log" | grep -av "panicked at" | head -1 | sed 's/^/    /'
    else
        echo "$name did not run:" >&2; tail -20 "$work/$name.log" >&2; verdict=1
    fi
}
expect_failure "host engine tests" cargo test --release --test host_engine_model
expect_failure "kernel tests" scripts/test-kernel.sh b_engine_writes
exit $verdict
