#!/usr/bin/env bash
# Boots a diskless PC: qemu with its iPXE network ROM on qemu's user network (this machine
# is 10.0.2.2 there), whose iPXE chains the HTTP service's /boot.ipxe and sanboots the PC's
# disk. Prints what the PC printed on its serial port.
#   scripts/demo/boot-pc.sh HTTP_PORT [SECONDS]
set -euo pipefail
port=$1 limit=${2:-120}
dir=$(mktemp -d /tmp/cowctl-pc.XXXXXX)
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/tftp"
printf '#!ipxe\nchain http://10.0.2.2:%s/boot.ipxe\n' "$port" >"$dir/tftp/boot.ipxe"
set +e
timeout "$limit" qemu-system-x86_64 -accel tcg -m 256 -display none -no-reboot -nodefaults -boot n \
    -serial "file:$dir/serial.log" \
    -netdev "user,id=n0,tftp=$dir/tftp,bootfile=boot.ipxe" -device e1000,netdev=n0 \
    -device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null >/dev/null 2>&1
set -e
tr -d '\r' <"$dir/serial.log"
