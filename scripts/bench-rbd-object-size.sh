#!/usr/bin/env bash
# The PCs' clones' object size (`ceph: object_size`), measured: on one cluster started here
# (scripts/ceph/cluster.sh, one OSD), fresh clones of one 1 GiB image of random data made
# with each object size, and librbd alone on each (rbd bench, cache off, as cowctl opens its
# clones): 4 KiB random first writes at queue depth 16 (80 MiB of them), the fill `rbd du`
# then counts, and 1 MiB sequential reads at depth 4 of a clone nothing has written.
# Prints a table. Not part of the tests.
#   scripts/bench-rbd-object-size.sh      (SIZES="4K 16K 64K 256K 1M 4M")
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
sizes=${SIZES:-4K 16K 64K 256K 1M 4M}
scripts/provision.sh --tests >/dev/null
work=$(mktemp -d /var/tmp/cowctl-bench-objsize.XXXXXX)
cleanup() {
    scripts/ceph/cluster.sh stop "$work/ceph" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
scripts/ceph/cluster.sh start "$work/ceph" --osd-gib 16 --owner-pid $$ >&2
export CEPH_CONF=$work/ceph/ceph.conf
echo "bench-rbd-object-size: a 1 GiB image of random data, snapshot golden@base" >&2
head -c $((1 << 30)) /dev/urandom >"$work/golden.img"
rbd import --no-progress "$work/golden.img" rbd/golden
rm "$work/golden.img"
rbd snap create rbd/golden@base >/dev/null 2>&1
rbd snap protect rbd/golden@base

# ops IMAGE TYPE PATTERN SIZE THREADS TOTAL: librbd's ops per second.
ops() {
    rbd bench --io-type "$2" --io-pattern "$3" --io-size "$4" --io-threads "$5" --io-total "$6" \
        --rbd_cache=false "rbd/$1" 2>/dev/null | sed -n 's/^elapsed:.*ops\/sec: *\([0-9]*\).*/\1/p'
}
clone() { rbd clone --object-size "$2" --stripe-unit "$2" --stripe-count 1 rbd/golden@base "rbd/$1"; }

declare -A first fill seq
for s in $sizes; do
    clone "w$s" "$s"
    first[$s]=$(ops "w$s" write rand 4K 16 80M)
    fill[$s]=$(rbd du --format json "rbd/w$s" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["used_size"] >> 20)')
    rbd rm --no-progress "rbd/w$s" >/dev/null
    clone "r$s" "$s"
    seq[$s]=$(ops "r$s" read seq 1M 4 2G)
    rbd rm --no-progress "rbd/r$s" >/dev/null
    echo "bench-rbd-object-size: $s: first writes ${first[$s]} IOPS, fill ${fill[$s]} MiB, sequential ${seq[$s]} MiB/s" >&2
done

echo
echo "| clone object size (one OSD, librbd alone, cache off) | 4 KiB random first writes, qd16 (80 MiB into a fresh clone) | fill \`rbd du\` counts after them | 1 MiB sequential reads, qd4, of a fresh clone | first writes ÷ 64 KiB objects' |"
echo "|---|---|---|---|---|"
base=${first[64K]:-0}
for s in $sizes; do
    ratio=$(python3 -c "print(f'{${first[$s]} / max($base, 1):.2f}×')")
    echo "| $s | ${first[$s]} IOPS | ${fill[$s]} MiB | ${seq[$s]} MB/s | $ratio |"
done
