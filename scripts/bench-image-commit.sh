#!/usr/bin/env bash
# `cowctl image commit` of a PC with 1 GiB changed, on xfs (reflink: the parent's blocks are
# shared, only the changed chunks are written) and on ext4 (the parent is copied extent by
# extent, holes kept), against `cp --sparse=always` of the same parent on the same file system
# in the same run. Each file system is a fresh sparse file, loop-mounted; the image holds
# DATA GiB of random data spread over its SIZE GiB (a disk partly full), the PC's 1 GiB of
# changes goes through cowctl serve over NBD (qemu-io), and page caches are dropped before
# each timed step. On xfs a second, 4x smaller image shows whether the time grows with size.
#   scripts/bench-image-commit.sh   (BENCH_COMMIT_MIB=20480 BENCH_COMMIT_DATA_MIB=8192 BENCH_COMMIT_CHANGED_MIB=1024,
#                                    BENCH_COMMIT_FS=xfs|ext4: that file system only)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/provision.sh --tests
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh # free_port
size_mib=${BENCH_COMMIT_MIB:-20480} data_mib=${BENCH_COMMIT_DATA_MIB:-8192} changed_mib=${BENCH_COMMIT_CHANGED_MIB:-1024}
cowctl=$repo/target/release/cowctl
work=$(mktemp -d /var/tmp/cowctl-commit.XXXXXX)
mnt=$work/mnt
mkdir "$mnt"
# Never fails: the bench's own result decides the exit status.
cleanup() {
    [[ -n ${COWCTL_MANIFEST:-} ]] && "$cowctl" down >/dev/null 2>&1
    mountpoint -q "$mnt" 2>/dev/null && umount "$mnt" 2>/dev/null
    [[ -s $work/loop ]] && losetup -d "$(cat "$work/loop")" 2>/dev/null
    rm -rf "$work"
    return 0
}
trap cleanup EXIT
drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
now() { date +%s.%N; }

# bench FS SIZE_MIB DATA_MIB: prints "commit_s cp_s method" for one file system and image.
bench() {
    local fs=$1 size_mib=$2 data_mib=$3 piece=64 port
    rm -f "$work/fs.img"
    truncate -s $((size_mib * 3 + 4096))M "$work/fs.img"
    case $fs in
    xfs) mkfs.xfs -q -f -m reflink=1 "$work/fs.img" ;;
    ext4) mkfs.ext4 -q -F "$work/fs.img" ;;
    esac
    loopdev=$(losetup -f --show "$work/fs.img")
    echo "$loopdev" >"$work/loop"
    mount "$loopdev" "$mnt"
    head -c $((piece << 20)) /dev/urandom >"$work/piece"
    truncate -s "${size_mib}M" "$mnt/built.raw"
    local n=$((data_mib / piece)) stride=$((size_mib / (data_mib / piece)))
    for ((i = 0; i < n; i++)); do
        dd if="$work/piece" of="$mnt/built.raw" bs=1M seek=$((i * stride)) conv=notrunc,fsync status=none
    done
    port=$(free_port)
    mkdir "$mnt/cow"
    export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
    cat >"$COWCTL_MANIFEST" <<YAML
backend: userspace
images:
  g:
    versions: $mnt/versions
defaults:
  image: g
  cow_dir: $mnt/cow
  cow_size: $((changed_mib + changed_mib / 8 + 64))MiB
  chunk: 32KiB
  export: nbd
nbd:
  listen: 127.0.0.1:$port
  socket: $work/nbd.sock
pcs:
  - name: pc-01
    keep: true
YAML
    "$cowctl" image import "$mnt/built.raw" --image g >/dev/null
    rm "$mnt/built.raw"
    "$cowctl" apply >/dev/null
    local writes=$((changed_mib / piece)) wstride=$((size_mib / (changed_mib / piece)))
    for ((i = 0; i < writes; i++)); do
        qemu-io -f raw -c "write -P 0x5a $(((i * wstride + wstride / 2) % (size_mib - piece)))M ${piece}M" "nbd://127.0.0.1:$port/pc-01" >/dev/null
    done
    "$cowctl" down >/dev/null
    drop
    # Best of two rounds each, alternating: the disk's write speed varies from run to run.
    local round commit_s="" cp_s="" t0 out wstart=$(((wstride / 2) % (size_mib - piece)))
    for round in 1 2; do
        drop
        t0=$(now)
        out=$("$cowctl" image commit pc-01 --version "r$round" --note bench)
        commit_s=$(awk -v a="$t0" -v b="$(now)" -v best="$commit_s" 'BEGIN {t = b - a; print (best == "" || t < best) ? t : best}')
        echo "bench-image-commit: $fs, round $round: $out" | head -1 >&2
        # The new version holds the PC's first write (the tests check every byte).
        qemu-io -f raw -r -c "read -P 0x5a ${wstart}M ${piece}M" "$mnt/versions/r$round/disk.img" | grep -q "read $((piece << 20))/" ||
            { echo "bench-image-commit: r$round on $fs lacks the PC's write" >&2; exit 1; }
        drop
        t0=$(now)
        cp --sparse=always "$mnt/versions/v1/disk.img" "$mnt/cp.img"
        sync
        cp_s=$(awk -v a="$t0" -v b="$(now)" -v best="$cp_s" 'BEGIN {t = b - a; print (best == "" || t < best) ? t : best}')
        rm "$mnt/cp.img"
        if ((round == 1)); then "$cowctl" image prune g >/dev/null; fi # r1 goes: room for round 2
    done
    local method=sparse
    grep -q reflink <<<"$out" && method=reflink
    echo "$commit_s $cp_s $method"
    umount "$mnt"
    losetup -d "$loopdev"
    rm -f "$work/fs.img" "$work/loop"
    unset COWCTL_MANIFEST
}

echo "bench-image-commit: $size_mib MiB images holding $data_mib MiB of data, $changed_mib MiB changed by the PC"
echo
echo "| file system | image | commit | method | cp --sparse=always of the parent | commit throughput ÷ cp's |"
echo "|---|---|---|---|---|---|"
for row in "xfs $size_mib $data_mib" "xfs $((size_mib / 4)) $((data_mib / 4))" "ext4 $size_mib $data_mib"; do
    read -r fs s d <<<"$row"
    [[ -n ${BENCH_COMMIT_FS:-} && $fs != "$BENCH_COMMIT_FS" ]] && continue
    # In this shell, not a subshell: its unmount is over before the next file system starts.
    bench "$fs" "$s" "$d" >"$work/result"
    read -r commit cp method <"$work/result"
    # Throughput over the same data: the commit writes the parent's data and the changes.
    awk -v fs="$fs" -v s="$s" -v d="$d" -v c="$commit" -v p="$cp" -v m="$method" \
        'BEGIN {printf "| %s | %.1f GiB (%.1f GiB data) | %.2f s | %s | %.2f s | %.2f× |\n", fs, s / 1024, d / 1024, c, m, p, p / c}'
done
