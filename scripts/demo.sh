#!/usr/bin/env bash
# The main job, with built-in defaults: builds cowctl, makes a small golden image and a PC's
# COW file, lets the kernel's dm-snapshot write to it, and shows that cowctl reads the very
# same file (status numbers, flattened disk) and resets it. Where this machine's kernel has
# no device-mapper, the kernel part runs in the test VM (scripts/vm.sh).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
command -v cargo >/dev/null || { echo "demo: cargo not found; install Rust >= 1.89 (rustup)" >&2; exit 1; }
scripts/provision.sh
cargo build --release --quiet
if [[ -e /dev/mapper/control ]] || modprobe dm-snapshot 2>/dev/null; then
    exec scripts/demo/kernel-roundtrip.sh
fi
echo "demo: this kernel has no device-mapper; running the kernel part in a VM"
scripts/vm.sh run scripts/demo/kernel-roundtrip.sh | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -av -e SeaBIOS -e 'Booting from' -e 'sysrq' -e 'reboot:'
