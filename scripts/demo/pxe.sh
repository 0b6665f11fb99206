#!/usr/bin/env bash
# The demo's PXE boot (manifests/demo-pxe.yaml): a qemu PC whose only NIC is a tap device the
# demo makes boots with its own ROM through the whole chain — DHCP from the dnsmasq `cowctl
# apply` starts, iPXE chained to /boot.ipxe, sanboot over iSCSI — twice (it resets on boot,
# so both count 1). Says which step it skips, and why, where this machine cannot.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH=$repo/target/release:$PATH COWCTL_MANIFEST=$repo/manifests/demo-pxe.yaml
export COWCTL_RUN_DIR=/run/cowctl-pxe-demo
source "$repo/scripts/demo/setup.sh"
tap=cowdemo0 mac=52:54:00:de:00:01

echo; echo "== pc-px boots through the whole chain: PXE DHCP -> iPXE -> /boot.ipxe -> sanboot"
skip() { echo "demo: the PXE boot is skipped: $*"; exit 0; }
[[ $(id -u) == 0 ]] || skip "making a tap device for the PC's network needs root"
command -v dnsmasq >/dev/null || skip "no dnsmasq (Debian package dnsmasq-base) to answer the PC's DHCP"
[[ -e /usr/lib/ipxe/undionly.kpxe ]] || skip "no iPXE loaders for PXE ROMs (Debian package ipxe)"
command -v qemu-system-x86_64 >/dev/null || skip "no qemu to be the PC (Debian package qemu-system-x86)"
ip link show "$tap" >/dev/null 2>&1 && ip link del "$tap"
ip tuntap add dev "$tap" mode tap 2>/dev/null || skip "this machine cannot make a tap device (/dev/net/tun)"
cleanup() {
    cowctl down >/dev/null 2>&1 || true
    ip link del "$tap" 2>/dev/null || true
}
trap cleanup EXIT
ip addr add 10.213.0.1/24 dev "$tap"
ip link set "$tap" up
say cowctl apply
work=$(mktemp -d /tmp/cowctl-pxe-pc.XXXXXX)
for boot in 1 2; do
    echo; echo "-- boot $boot: qemu's iPXE ROM on $tap, MAC $mac, no other network"
    set +e
    timeout 180 qemu-system-x86_64 -accel tcg -m 256 -display none -no-reboot -nodefaults -boot n \
        -serial "file:$work/serial.log" \
        -netdev "tap,id=n0,ifname=$tap,script=no,downscript=no" -device "e1000,netdev=n0,mac=$mac" \
        -device isa-debug-exit,iobase=0xf4,iosize=0x04 </dev/null >/dev/null 2>&1
    set -e
    tr -d '\r' <"$work/serial.log" | grep -a -e '^cowctl-boot' -e 'http://' -e 'iscsi:' | sed 's/^/pc-px: /'
done
echo; echo "-- what dnsmasq and the HTTP service saw"
grep -a -e "DHCPACK" -e "ignored" "$COWCTL_RUN_DIR/pxe/dhcp.log" | sed 's/^.*dnsmasq-dhcp[^:]*: //; s/^[0-9]* //' | tail -n 4
grep -a "reset on boot" "$COWCTL_RUN_DIR/serve.log" | sed 's/^.*cowctl::web::boot: //' | tail -n 4 || true
say cowctl down
rm -rf "$work"
