#!/usr/bin/env bash
# One PC's disk through the kernel and back through cowctl (run as root with device-mapper).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cowctl=$repo/target/release/cowctl
work=$(mktemp -d /tmp/cowctl-demo.XXXXXX)
name=cowctl-demo-pc01
cleanup() {
    dmsetup remove --noudevsync "$name" 2>/dev/null || true
    [[ -n ${origin:-} ]] && losetup -d "$origin" 2>/dev/null
    [[ -n ${cowdev:-} ]] && losetup -d "$cowdev" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
modprobe dm-snapshot
modprobe loop 2>/dev/null || true
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

echo "== a 64 MiB golden image and a 32 MiB COW for pc-01"
head -c $((64 << 20)) /dev/zero | tr '\0' 'G' >"$work/golden.img"
say "$cowctl" cow create "$work/pc-01.cow" --size 32MiB --chunk 32KiB

echo "== the kernel serves pc-01: read-only loop on the golden image, loop on the COW, snapshot PO 64"
origin=$(losetup -f --show -r "$work/golden.img")
cowdev=$(losetup -f --show "$work/pc-01.cow")
dmsetup create --noudevsync "$name" --table "0 $((64 << 11)) snapshot $origin $cowdev PO 64"
dev=/dev/dm-$(dmsetup info -c --noheadings -o minor "$name" | tr -d ' ')
echo "pc-01 writes 5 MiB at 1 MiB and 'hello' at byte 40000000"
dd if=/dev/urandom of="$dev" bs=1M seek=1 count=5 oflag=direct status=none
printf hello | dd of="$dev" bs=1 seek=40000000 conv=notrunc,fsync status=none
say dmsetup status "$name"
kernel=$(dmsetup status "$name" | awk '{print $4, $5}')
dd if="$dev" of="$work/kernel-view.raw" bs=1M iflag=direct status=none
dmsetup remove --noudevsync "$name"
losetup -d "$origin" "$cowdev"; origin= cowdev=

echo "== cowctl reads the same file"
say "$cowctl" cow inspect "$work/pc-01.cow"
ours=$("$cowctl" --json cow inspect "$work/pc-01.cow" |
    python3 -c 'import json,sys; i=json.load(sys.stdin); print("%d/%d %d" % (i["sectors_allocated"], i["total_sectors"], i["metadata_sectors"]))')
echo "kernel said $kernel; cowctl says $ours"
[[ $kernel == "$ours" ]] || { echo "MISMATCH" >&2; exit 1; }
say "$cowctl" cow flatten --base "$work/golden.img" "$work/pc-01.cow" -o "$work/pc-01.raw"
cmp "$work/kernel-view.raw" "$work/pc-01.raw" && echo "flattened disk == what the kernel served"

echo "== reset pc-01 to the golden image"
say "$cowctl" cow reset "$work/pc-01.cow"
say "$cowctl" cow inspect --chunk 32KiB "$work/pc-01.cow"
