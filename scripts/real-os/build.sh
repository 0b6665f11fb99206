#!/usr/bin/env bash
# A real Linux golden disk, built from Debian's packages on this machine (no downloads but
# apt's): Debian's kernel (the test VM's, scripts/vm.sh), an initramfs whose open-iscsi
# (`iscsistart`) logs in to the disk the firmware's iPXE published in the iBFT, and a root
# file system whose /sbin/init is scripts/real-os/os-init.
#
#   scripts/real-os/build.sh OUT     writes OUT (a sparse 128 MiB disk image); prints its path
#
# The disk is GPT with two partitions and boots on both kinds of PC:
#   1. an EFI system partition (FAT) with systemd-boot as \EFI\BOOT\BOOTX64.EFI (UEFI), and
#      SYSLINUX with the "legacy BIOS bootable" flag, chained from syslinux's gptmbr (BIOS);
#      both load the same kernel and initramfs from it;
#   2. the root file system (ext4, label cowctl-root), mounted over iSCSI by the initramfs.
# The disk carries no host-specific state: any PC booting it gets the iBFT's target.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
source "$repo/scripts/lib/modules.sh"
out=${1:?usage: scripts/real-os/build.sh OUT}

need() { command -v "$1" >/dev/null || { echo "real-os: $1 is missing (Debian package $2)" >&2; exit 1; }; }
need sfdisk fdisk; need mkfs.fat dosfstools; need mcopy mtools; need syslinux syslinux
need mkfs.ext4 e2fsprogs; need iscsistart open-iscsi; need cpio cpio
[[ -x /bin/busybox ]] || { echo "real-os: /bin/busybox is missing (Debian package busybox-static)" >&2; exit 1; }
boot_efi=/usr/lib/systemd/boot/efi/systemd-bootx64.efi
[[ -f $boot_efi ]] || { echo "real-os: $boot_efi is missing (Debian package systemd-boot-efi)" >&2; exit 1; }
gptmbr=/usr/lib/syslinux/mbr/gptmbr.bin
[[ -f $gptmbr ]] || { echo "real-os: $gptmbr is missing (Debian package syslinux-common)" >&2; exit 1; }

kdir=$("$repo/scripts/vm.sh" prepare-kernel)
kver=$(basename "$kdir")
root=$kdir/root
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- the initramfs: busybox, iscsistart with its libraries, the modules it needs ---
stage=$work/initramfs
mkdir -p "$stage"/{bin,sbin,dev,proc,sys,run,tmp,etc/iscsi,newroot,mods,lib64,lib/x86_64-linux-gnu}
cp /bin/busybox "$stage/bin/busybox"
# A program of this machine and the libraries it links, into a root.
add_program() {
    local dest=$1 program=$2 lib
    mkdir -p "$dest/sbin" "$dest/lib64" "$dest/lib/x86_64-linux-gnu"
    cp "$program" "$dest/sbin/"
    for lib in $(ldd "$program" | awk '/=> \// { print $3 }'); do
        cp -L "$lib" "$dest/lib/x86_64-linux-gnu/"
    done
    cp -L /lib64/ld-linux-x86-64.so.2 "$dest/lib64/"
}
add_program "$stage" /usr/sbin/iscsistart
# The PC's NICs (e1000, virtio), the iSCSI initiator and the iBFT reader, the AoE driver
# (loaded later, bound to the NIC of the aBFT), the disk, its file system, and qemu's
# fw_cfg, through which a test tells the OS what to do on this boot.
copy_modules "$root" "$kver" "$stage" e1000 virtio_pci virtio_net iscsi_tcp iscsi_ibft aoe \
    sd_mod crc32c_generic ext4 qemu_fw_cfg
install -m 0755 "$here/initramfs-init" "$stage/init"
(cd "$stage" && find . | cpio -o -H newc --quiet | gzip -6) >"$work/initrd.img"

# --- the root file system ---
rootfs=$work/rootfs
mkdir -p "$rootfs"/{bin,sbin,dev,proc,sys,run,tmp,var/lib/cowctl-os,var/lib/iscsi,etc/iscsi}
cp /bin/busybox "$rootfs/bin/busybox"
# iscsid takes over the session iscsistart made, and makes its connection again when the
# target goes away and comes back (a restart of cowctl serve), as on an installed system.
add_program "$rootfs" /usr/sbin/iscsid
add_program "$rootfs" /usr/sbin/iscsiadm
grep -v '^iscsid.startup' /etc/iscsi/iscsid.conf >"$rootfs/etc/iscsi/iscsid.conf"
# iscsid answers only root on its control socket, and finds root by name.
echo 'root:x:0:0:root:/root:/bin/sh' >"$rootfs/etc/passwd"
echo 'root:x:0:' >"$rootfs/etc/group"
install -m 0755 "$here/os-init" "$rootfs/sbin/init"
mkfs.ext4 -q -F -L cowctl-root -d "$rootfs" "$work/root.img" 80M >/dev/null

# --- the EFI system partition, with both boot loaders ---
cmdline="console=ttyS0,115200 panic=-1"
mkfs.fat -F 16 -n COWCTL-ESP -C "$work/esp.img" $((44 * 1024)) >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/syslinux
mcopy -i "$work/esp.img" "$root/boot/vmlinuz-$kver" ::/vmlinuz
mcopy -i "$work/esp.img" "$work/initrd.img" ::/initrd.img
mcopy -i "$work/esp.img" "$boot_efi" ::/EFI/BOOT/BOOTX64.EFI
printf 'default cowctl.conf\ntimeout 0\n' >"$work/loader.conf"
printf 'title cowctl real OS\nlinux /vmlinuz\ninitrd /initrd.img\noptions %s\n' "$cmdline" >"$work/cowctl.conf"
mcopy -i "$work/esp.img" "$work/loader.conf" ::/loader/loader.conf
mcopy -i "$work/esp.img" "$work/cowctl.conf" ::/loader/entries/cowctl.conf
printf 'SERIAL 0 115200\nDEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL /vmlinuz\n  INITRD /initrd.img\n  APPEND %s\n' \
    "$cmdline" >"$work/syslinux.cfg"
mcopy -i "$work/esp.img" "$work/syslinux.cfg" ::/syslinux/syslinux.cfg
syslinux --directory /syslinux --install "$work/esp.img"

# --- the disk: GPT, gptmbr, the two partitions ---
disk=$(mktemp "$out.XXXXXX")
truncate -s 128M "$disk"
sfdisk --quiet "$disk" <<TABLE
label: gpt
start=1MiB, size=44MiB, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="EFI system", attrs="LegacyBIOSBootable"
start=45MiB, size=80MiB, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="cowctl-root"
TABLE
dd if="$gptmbr" of="$disk" bs=440 count=1 conv=notrunc status=none
dd if="$work/esp.img" of="$disk" bs=1M seek=1 conv=notrunc,sparse status=none
dd if="$work/root.img" of="$disk" bs=1M seek=45 conv=notrunc,sparse status=none
chmod 0644 "$disk"
mv "$disk" "$out"
echo "$out"
