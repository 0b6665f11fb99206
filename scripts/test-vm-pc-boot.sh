#!/usr/bin/env bash
# A real Linux boots from the kernel backend on BIOS and UEFI PCs: the test VM exports pc-01,
# whose golden image is scripts/real-os/build.sh's disk, with `cowctl apply` (LIO, CHAP, the
# initiator ACL) and serves its boot script with `cowctl serve` (scripts/vm/pc-boot-guest.sh);
# qemu forwards two ports of this host into the VM, where qemu PCs (scripts/real-os/boot-pc.sh)
# chain /boot.ipxe, sanboot the disk, and the OS's open-iscsi takes it over from the iBFT and
# mounts its root from LIO. A BIOS PC boots (its OS writes a file), a UEFI PC boots the same
# disk and finds that file, `cowctl reset` while exported, and the BIOS PC boots the golden
# image again; no boot may see an I/O error, and the golden image is unchanged at the end.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/vm.sh prepare
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh
read -r iscsi http < <(free_ports 2)
results=$(mktemp -d /tmp/cowctl-vm-pc-boot.XXXXXX)
scripts/real-os/build.sh "$results/golden.img" >/dev/null
vm_log=$results/vm.log
COWCTL_VM_NET=1 COWCTL_VM_FWD="$iscsi $http" COWCTL_VM_RESULTS=$results COWCTL_VM_TIMEOUT=900 \
    COWCTL_TEST_ISCSI_PORT=$iscsi COWCTL_TEST_HTTP_PORT=$http COWCTL_TEST_GOLDEN=$results/golden.img \
    scripts/vm.sh run scripts/vm/pc-boot-guest.sh >"$vm_log" 2>&1 &
vm=$!
fail() {
    echo "test-vm-pc-boot: $*" >&2
    sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' "$vm_log" | grep -av -e SeaBIOS -e 'Booting from' | tail -n 30 >&2
    echo stop >"$results/cmd.99" 2>/dev/null || true
    kill "$vm" 2>/dev/null || true
    exit 1
}
for _ in $(seq 600); do
    [[ -f $results/ready ]] && break
    kill -0 "$vm" 2>/dev/null || fail "the VM stopped before it served the PC"
    sleep 0.5
done
[[ -f $results/ready ]] || fail "the VM never served the PC"

printf '#!ipxe\nchain http://10.0.2.2:%s/boot.ipxe\n' "$http" >"$results/boot.ipxe"
boot() { # FIRMWARE: prints the OS's boot number and how many earlier files it found
    local out
    out=$(scripts/real-os/boot-pc.sh "$1" "$results/boot.ipxe" boot 400) || fail "the $1 PC did not boot cleanly"
    echo "test-vm-pc-boot: $1: $out" >&2
    sed -n 's/^cowctl-os boot=\([0-9]*\) checked=\([0-9]*\) bad=0 .*/\1 \2/p' <<<"$out"
}
n=0
cowctl_in_vm() { # runs cowctl in the VM
    n=$((n + 1))
    echo "$*" >"$results/cmd.$n"
    for _ in $(seq 300); do [[ -f $results/done.$n ]] && break; sleep 0.2; done
    [[ $(cat "$results/done.$n" 2>/dev/null) == 0 ]] || fail "cowctl $* in the VM failed: $(cat "$results/out.$n" 2>/dev/null)"
    cat "$results/out.$n"
}

first=$(boot bios)
[[ $first == "1 0" ]] || fail "the BIOS PC's first boot was '${first}', not boot 1 finding no file"
second=$(boot uefi)
[[ $second == "2 1" ]] || fail "the UEFI PC's boot was '${second}', not boot 2 finding the first boot's file"
cowctl_in_vm reset pc-01
after=$(boot bios)
[[ $after == "1 0" ]] || fail "the boot after a reset was '${after}', not boot 1 on the golden image"
echo stop >"$results/cmd.$((n + 1))"
wait "$vm" || fail "the VM's checks failed"
grep -a "pc-boot-guest:" "$vm_log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
echo "test-vm-pc-boot: 1 passed: a real Linux booted pc-01 from the kernel's LIO export on BIOS, then UEFI (finding BIOS's file), then after a reset on BIOS from the golden image"
rm -rf "$results"
