#!/usr/bin/env bash
# The main job, with built-in defaults: builds cowctl and serves the demo room of
# manifests/demo.yaml (an image it creates; two iSCSI PCs and an AoE PC).
#  - With device-mapper: the kernel serves it — apply, a PC logs in and writes, status, a live
#    reset, down; then a COW written by dm-snapshot is read back by cowctl.
#  - Without (containers, restricted kernels, CI): cowctl's engine serves the PCs over iSCSI
#    and NBD (scripts/demo/userspace.sh), a qemu PC boots pc-01 over iSCSI, and the service
#    keeps serving; the demo prints how to connect.
#  - `scripts/demo.sh --kernel-vm` runs the kernel demo in the test VM (scripts/vm.sh).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust >= 1.89 (rustup)" >&2; exit 1; }
scripts/provision.sh --demo
cargo build --release --quiet
if [[ -e /dev/mapper/control ]] || modprobe dm-snapshot 2>/dev/null; then
    scripts/demo/room.sh
    exec scripts/demo/kernel-roundtrip.sh
fi
if [[ ${1:-} != --kernel-vm ]]; then
    echo "demo: this kernel has no device-mapper: cowctl's userspace engine serves the room over iSCSI and NBD"
    exec scripts/demo/userspace.sh
fi
echo "demo: running the kernel demo in a VM with Debian's kernel"
scripts/vm.sh run bash -c 'scripts/demo/room.sh && scripts/demo/kernel-roundtrip.sh' |
    sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -av -e SeaBIOS -e 'Booting from' -e 'sysrq' -e 'reboot:'
