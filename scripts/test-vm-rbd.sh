#!/usr/bin/env bash
# The host half of tests/vm_kernel_rbd.rs: a real Ceph cluster (scripts/ceph/cluster.sh) on
# this host, bound to the address of a tap device this script makes; the VM's NIC is the
# tap's other end, so the VM's kernel (its rbd driver) and its userspace (librbd, the rbd
# command) reach the monitor and the OSD there. Why the host's cluster and not one in the
# VM: the VM runs under TCG, where a monitor and a bluestore OSD would take minutes to
# start and the test would measure the emulator; on the host the cluster is ready in ~5 s.
# The tap and the cluster are removed however the test ends.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source scripts/lib/vmtest.sh
bin=$(vm_test_binary vm_kernel_rbd)
work=$(mktemp -d /tmp/cowctl-vm-rbd.XXXXXX)
tap=cowrbd$(($$ % 100000))
# A /30 of 10.97.x.y picked from the pid, so that two runs on one host do not collide.
net=$(($$ % 16000))
host_addr=10.97.$((net / 64)).$((net % 64 * 4 + 1))
guest_addr=10.97.$((net / 64)).$((net % 64 * 4 + 2))
cleanup() {
    scripts/ceph/cluster.sh stop "$work/ceph" >/dev/null 2>&1 || true
    ip link del "$tap" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
ip tuntap add dev "$tap" mode tap
ip addr add "$host_addr/30" dev "$tap"
ip link set "$tap" up
scripts/ceph/cluster.sh start "$work/ceph" --addr "$host_addr" --owner-pid $$
status=0
COWCTL_VM_TAP=$tap COWCTL_VM_TAP_ADDR=$guest_addr/30 COWCTL_TEST_CEPH_DIR=$work/ceph \
    RUST_BACKTRACE=1 scripts/vm.sh run "$bin" --ignored --test-threads=1 --color=never ${COWCTL_TEST_NOCAPTURE:+--nocapture} 2>&1 |
    sed -u "s/\x1b\[[0-9;]*m//g" | tee "$work/vm.log" || status=1
grep -q "test result: ok. 1 passed" "$work/vm.log" || status=1
if ((status)); then echo "test-vm-rbd: FAILED" >&2; else echo "test-vm-rbd: 1 passed (the VM's kernel maps clones from this host's cluster, LIO exports them)"; fi
exit $status
