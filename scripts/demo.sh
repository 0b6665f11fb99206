#!/usr/bin/env bash
# The main job, with built-in defaults: builds cowctl and serves the demo room of
# manifests/demo.yaml (an image it creates, two iSCSI PCs and an AoE PC): apply, a PC logs in
# and writes, status, a live reset, down; then a PC's COW written by the kernel's dm-snapshot
# is read back by cowctl (same status numbers, same disk). Where this machine's kernel has no
# device-mapper, both run in the test VM (scripts/vm.sh).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust >= 1.89 (rustup)" >&2; exit 1; }
scripts/provision.sh
cargo build --release --quiet
if [[ -e /dev/mapper/control ]] || modprobe dm-snapshot 2>/dev/null; then
    scripts/demo/room.sh
    exec scripts/demo/kernel-roundtrip.sh
fi
echo "demo: this kernel has no device-mapper; running the demo in a VM with Debian's kernel"
scripts/vm.sh run bash -c 'scripts/demo/room.sh && scripts/demo/kernel-roundtrip.sh' |
    sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -av -e SeaBIOS -e 'Booting from' -e 'sysrq' -e 'reboot:'
