#!/usr/bin/env bash
# The demo room on a machine without device-mapper: cowctl's own engine serves every PC of
# manifests/demo.yaml over NBD. Leaves the service running and says how to connect.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
export PATH=$repo/target/release:$PATH COWCTL_MANIFEST=$repo/manifests/demo.yaml
source "$repo/scripts/demo/setup.sh"

say cowctl validate
say cowctl plan
say cowctl apply
if command -v qemu-io >/dev/null; then
    echo; echo "== pc-02 writes 8 MiB over NBD and flushes"
    say qemu-io -f raw -c 'write -P 0x55 1M 8M' -c flush nbd://127.0.0.1:10809/pc-02
fi
if [[ $(od -An -j510 -N2 -tx1 "$demo/golden.img" | tr -d ' ') != 55aa ]]; then
    echo; echo "demo: $demo/golden.img (from an earlier run) does not boot: remove $demo to boot a PC from it"
elif command -v qemu-system-x86_64 >/dev/null && [[ -e /usr/lib/ipxe/qemu/pxe-e1000.rom ]]; then
    echo; echo "== pc-01 boots: a qemu PC whose iPXE chains /boot.ipxe and sanboots pc-01 over iSCSI"
    echo "   (with pc-01's initiator name and own CHAP secret); its boot sector counts its boots"
    say scripts/demo/boot-pc.sh 8080
    say scripts/demo/boot-pc.sh 8080
else
    echo; echo "demo: no qemu with iPXE here (scripts/provision.sh --demo installs it): the PC boot is skipped"
fi
scripts/demo/pxe.sh
say cowctl status || true
if command -v curl >/dev/null; then
    echo; echo "== this machine is pc-01's address: CowBell's question, and the metrics"
    say curl -s http://127.0.0.1:8080/cow; echo
    say curl -s http://127.0.0.1:8081/metrics | grep -E '^cowctl_cow_(used|total)_bytes' || true
fi
cat <<INFO

cowctl serve is running (log: /run/cowctl/serve.log). Boot pc-01 again, or connect to a PC's disk:
  scripts/demo/boot-pc.sh 8080
  iscsi-inq -i iqn.2024-01.lan.demo:pc-02 'iscsi://demo%SECRET@127.0.0.1:3260/iqn.2024-01.lan.demo:pc-02/0'   # SECRET: cowctl chap pc-02
  nbdinfo nbd://127.0.0.1:10809/pc-01
  qemu-img info nbd://127.0.0.1:10809/pc-02
  qemu-img info 'nbd+unix:///pc-03?socket=/run/cowctl/nbd.sock'
HTTP (cowctl serve): the dashboard at http://127.0.0.1:8081/ (its reset buttons ask for the
token in /var/lib/cowctl-demo/admin.token), CowBell at http://127.0.0.1:8080/cow, and
  curl -X POST -H "Authorization: Bearer \$(cat /var/lib/cowctl-demo/admin.token)" http://127.0.0.1:8081/api/v1/pcs/pc-02/reset
Manage the room:
  COWCTL_MANIFEST=$COWCTL_MANIFEST $repo/target/release/cowctl status
  COWCTL_MANIFEST=$COWCTL_MANIFEST $repo/target/release/cowctl reset pc-01
  COWCTL_MANIFEST=$COWCTL_MANIFEST $repo/target/release/cowctl down      # stops the service; COW files stay
INFO
