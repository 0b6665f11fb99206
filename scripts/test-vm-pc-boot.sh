#!/usr/bin/env bash
# A real PC boots from the kernel backend: the test VM exports pc-01 with `cowctl apply`
# (LIO, CHAP, the initiator ACL) and serves its boot script with `cowctl serve`
# (scripts/vm/pc-boot-guest.sh); qemu forwards two ports of this host into the VM, where a
# qemu PC with its iPXE ROM (scripts/demo/boot-pc.sh) chains /boot.ipxe and sanboots the
# counting boot sector. Boot, boot again (the counter rises), `cowctl reset` while exported,
# boot (the counter starts over); the golden image is unchanged at the end.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/vm.sh prepare
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh
read -r iscsi http < <(free_ports 2)
results=$(mktemp -d /tmp/cowctl-vm-pc-boot.XXXXXX)
vm_log=$results/vm.log
COWCTL_VM_NET=1 COWCTL_VM_FWD="$iscsi $http" COWCTL_VM_RESULTS=$results COWCTL_VM_TIMEOUT=900 \
    COWCTL_TEST_ISCSI_PORT=$iscsi COWCTL_TEST_HTTP_PORT=$http \
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

boot() { # prints the counter the PC's boot sector printed
    scripts/demo/boot-pc.sh "$http" 180 | sed -n 's/^cowctl-boot counter=\([0-9]*\)$/\1/p'
}
n=0
cowctl_in_vm() { # runs cowctl in the VM
    n=$((n + 1))
    echo "$*" >"$results/cmd.$n"
    for _ in $(seq 300); do [[ -f $results/done.$n ]] && break; sleep 0.2; done
    [[ $(cat "$results/done.$n" 2>/dev/null) == 0 ]] || fail "cowctl $* in the VM failed: $(cat "$results/out.$n" 2>/dev/null)"
    cat "$results/out.$n"
}

first=$(boot)
[[ $first == 1 ]] || fail "the first boot printed counter '${first}', not 1"
second=$(boot)
[[ $second == 2 ]] || fail "the second boot printed counter '${second}', not 2"
cowctl_in_vm reset pc-01
after=$(boot)
[[ $after == 1 ]] || fail "the boot after a reset printed counter '${after}', not 1"
echo stop >"$results/cmd.$((n + 1))"
wait "$vm" || fail "the VM's checks failed"
grep -a "pc-boot-guest:" "$vm_log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g'
echo "test-vm-pc-boot: 1 passed: a qemu PC booted pc-01 from the kernel's LIO export three times (counters $first, $second, reset, $after)"
rm -rf "$results"
