#!/usr/bin/env bash
# The demo room (run as root on a kernel with device-mapper and LIO; scripts/demo.sh runs it
# in the test VM when this machine's kernel has neither): serve manifests/demo.yaml, let pc-01
# log in over iSCSI and write, watch the fill, reset it while logged in, and tear down.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH=$repo/target/release:$PATH COWCTL_MANIFEST=$repo/manifests/demo.yaml
source "$repo/scripts/demo/setup.sh"
target=iqn.2024-01.lan.demo:pc-01
cleanup() {
    iscsiadm -m node -T "$target" -p 127.0.0.1:3260 -I cowdemo --logout >/dev/null 2>&1 || true
    if [[ -n ${iscsid:-} ]]; then kill "$iscsid" 2>/dev/null; wait "$iscsid" 2>/dev/null || true; fi
    cowctl down >/dev/null 2>&1 || true
}
trap cleanup EXIT


say cowctl validate
say cowctl plan
say cowctl apply
say cowctl apply

if [[ -n ${COWCTL_IN_VM:-} ]]; then
    echo; echo "== pc-01 logs in over iSCSI with its own initiator name and CHAP, and writes 20 MiB"
    modprobe iscsi_tcp; modprobe sd_mod
    mkdir -p /etc/iscsi /run/lock/iscsi
    [[ -e /etc/iscsi/initiatorname.iscsi ]] || echo "InitiatorName=iqn.1993-08.org.debian:01:demo" >/etc/iscsi/initiatorname.iscsi
    # Its own session: on SIGTERM iscsid signals its whole process group.
    setsid iscsid -f >/dev/null 2>&1 & iscsid=$!
    sleep 0.5
    iscsiadm -m iface -I cowdemo -o new >/dev/null
    iscsiadm -m iface -I cowdemo -o update -n iface.initiatorname -v iqn.2024-01.lan.demo:pc-01 >/dev/null
    node() { iscsiadm -m node -T "$target" -p 127.0.0.1:3260 -I cowdemo "$@"; }
    node -o new >/dev/null
    node -o update -n node.session.auth.authmethod -v CHAP
    node -o update -n node.session.auth.username -v demo
    # pc-01's own secret, derived from the master secret: it opens pc-01's disk only.
    node -o update -n node.session.auth.password -v "$(cowctl --json chap pc-01 | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["secret"])')"
    node --login
    for _ in $(seq 50); do disk=$(ls /sys/class/iscsi_session/session*/device/target*/*/block 2>/dev/null | head -1); [[ -n $disk ]] && break; sleep 0.2; done
    echo "pc-01's disk is /dev/$disk"
    dd if=/dev/urandom of="/dev/$disk" bs=1M count=20 oflag=direct status=none
    say cowctl status || true
    echo; echo "== reset pc-01 while it is logged in; it reconnects and reads the golden image"
    say cowctl reset pc-01
    for _ in $(seq 150); do grep -qx LOGGED_IN /sys/class/iscsi_session/session*/state 2>/dev/null && break; sleep 0.2; done
    first=$(dd if="/dev/$disk" bs=512 skip=2048 count=1 iflag=direct status=none | head -c 16)
    echo "pc-01 reads the golden image again at 1 MiB: $first"
    say cowctl status
else
    echo; echo "Connect a PC: iscsiadm -m node -T $target -p 127.0.0.1:3260 --login (CHAP: cowctl chap pc-01)"
fi

echo; echo "== the COW is the kernel's own format: cowctl reads the same numbers as dmsetup"
say dmsetup status cowctl-pc-02
say cowctl cow inspect "$demo/cow/pc-02.cow"
say cowctl down
