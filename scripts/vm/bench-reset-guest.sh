#!/usr/bin/env bash
# Guest side of scripts/bench-reset.sh.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cowctl=$repo/target/release/cowctl
modprobe virtio_blk
for _ in $(seq 50); do [[ -b /dev/vda ]] && break; sleep 0.1; done
mkfs.ext4 -q -F /dev/vda
mkdir -p /scratch && mount /dev/vda /scratch
export COWCTL_RUN_DIR=/run/cowctl
echo "| COW size | filled (kernel status) | allocated on disk | reset, live | after reset | freed |"
echo "|---|---|---|---|---|---|"
for size_mib in ${*:-200 20480}; do
    d=/scratch/s$size_mib
    mkdir -p "$d/cow"
    truncate -s "$((size_mib + 64))M" "$d/golden.img"
    cat >"$d/room.yaml" <<YAML
images:
  g:
    path: $d/golden.img
iscsi:
  iqn_prefix: iqn.2024-01.lan.bench
  portals: [127.0.0.1:3260]
  acl: open
pcs:
  - name: pc-01
    image: g
    cow_dir: $d/cow
    cow_size: ${size_mib}MiB
    chunk: 64KiB
YAML
    "$cowctl" -f "$d/room.yaml" apply >/dev/null
    dev=/dev/dm-$(dmsetup info -c --noheadings -o minor cowctl-pc-01 | tr -d ' ')
    fill_mib=$((size_mib * 90 / 100))
    echo "bench: filling $fill_mib MiB of the $size_mib MiB COW" >&2
    dd if=/dev/zero of="$dev" bs=1M count="$fill_mib" oflag=direct status=none
    status=$(dmsetup status cowctl-pc-01 | cut -d' ' -f4-)
    before=$(du -k "$d/cow/pc-01.cow" | cut -f1)
    "$cowctl" -f "$d/room.yaml" --json reset pc-01 >"$d/reset.json" 2>"$d/reset.err" || { echo "bench: reset failed: $(cat "$d/reset.err")"; exit 1; }
    took=$(python3 -c 'import json,sys; print("%.1f ms" % (json.load(sys.stdin)[0]["seconds"] * 1000))' <"$d/reset.json")
    after=$(dmsetup status cowctl-pc-01 | cut -d' ' -f4-)
    left=$(du -k "$d/cow/pc-01.cow" | cut -f1)
    echo "| $size_mib MiB | $status | $((before / 1024)) MiB | $took | $after | $(((before - left) / 1024)) MiB |"
    "$cowctl" -f "$d/room.yaml" down >/dev/null
    rm -rf "$d"
done
echo "bench: done"
