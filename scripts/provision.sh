#!/usr/bin/env bash
# Installs what cowctl needs on Debian 12 (as root). Shared by the test VM (scripts/vm.sh),
# the test and demo commands, and the Vagrantfile.
#   scripts/provision.sh          build + run a kernel-backed server
#   scripts/provision.sh --demo   and what the demo boots a PC with (qemu's iPXE, nasm)
#   scripts/provision.sh --tests  and everything the tests use (qemu, initiators, promtool
#                                 from prometheus, ...)
set -euo pipefail
build=(gcc pkg-config libdevmapper-dev libclang-dev)
run=(kmod dmsetup vblade util-linux iproute2 qemu-utils libnbd-bin curl dnsmasq-base ipxe)
demo=(qemu-system-x86 ipxe-qemu nasm libiscsi-bin)
tests=("${demo[@]}" man-db groff-base dpkg-dev systemd xfsprogs btrfs-progs busybox-static cpio open-iscsi aoetools fio python3 libnbd-bin nbdkit chromium tgt libiscsi-dev qemu-block-extra prometheus
    ovmf fdisk dosfstools mtools syslinux syslinux-common systemd-boot-efi
    ceph-mon ceph-mgr ceph-osd ceph-common librbd1)
want=("${build[@]}" "${run[@]}")
[[ ${1:-} == --demo ]] && want+=("${demo[@]}")
[[ ${1:-} == --tests ]] && want+=("${tests[@]}")
missing_packages() {
    missing=()
    for p in "${want[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
}
# Twice: a machine that came with a newer qemu-utils (a backport) loses it when apt installs
# Debian 12's qemu-block-extra, which wants its own; the second round puts the matching one back.
for _ in 1 2; do
    missing_packages
    ((${#missing[@]})) || break
    echo "provision: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
done
missing_packages
((${#missing[@]} == 0)) || { echo "provision: still missing ${missing[*]}" >&2; exit 1; }
