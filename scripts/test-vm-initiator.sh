#!/usr/bin/env bash
# The host half of tests/vm_initiator.rs: serves one PC with cowctl's userspace iSCSI target
# on this host's loopback (ACL, CHAP, the admin API with a token), then runs the test in the
# VM, whose open-iscsi reaches the service at 10.0.2.2 through qemu's user network. The
# golden image must be unchanged afterwards.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
source scripts/lib/vmtest.sh
bin=$(vm_test_binary vm_initiator)
work=$(mktemp -d /tmp/cowctl-vm-initiator.XXXXXX)
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
trap 'target/release/cowctl down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
source scripts/lib/iscsi.sh
read -r port nbd http admin < <(free_ports 4)
head -c $((64 << 20)) /dev/urandom >"$work/golden.img"
before=$(sha256sum <"$work/golden.img")
mkdir "$work/cow"
(umask 077 && echo "vm-room-master-secret" >"$work/chap.secret" && od -An -N16 -tx1 /dev/urandom | tr -d " \n" >"$work/token")
cat >"$COWCTL_MANIFEST" <<YAML
backend: userspace
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work/cow
  cow_size: 256MiB
  chunk: 32KiB
iscsi:
  iqn_prefix: iqn.2024-01.lan.vm
  portals: ["127.0.0.1:$port"]
  acl: initiator
  chap:
    username: lab
    secret_file: $work/chap.secret
nbd:
  listen: 127.0.0.1:$nbd
  socket: $work/nbd.sock
http:
  listen: 127.0.0.1:$http
  admin_listen: 127.0.0.1:$admin
  token_file: $work/token
pcs:
  - name: pc-vm
    initiator: iqn.2024-01.lan.vm:init-pc-vm
YAML
target/release/cowctl apply >/dev/null
secret=$(target/release/cowctl --json chap pc-vm | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["secret"])')
status=0
COWCTL_VM_NET=1 COWCTL_TEST_PORTAL=10.0.2.2:$port COWCTL_TEST_TARGET=iqn.2024-01.lan.vm:pc-vm \
    COWCTL_TEST_INITIATOR=iqn.2024-01.lan.vm:init-pc-vm COWCTL_TEST_SECRET=$secret \
    COWCTL_TEST_ADMIN=10.0.2.2:$admin COWCTL_TEST_TOKEN=$(cat "$work/token") COWCTL_TEST_GOLDEN=$work/golden.img \
    RUST_BACKTRACE=1 scripts/vm.sh run "$bin" --ignored --test-threads=1 --color=never 2>&1 |
    sed -u "s/\x1b\[[0-9;]*m//g" | tee "$work/vm.log" || status=1
grep -q "test result: ok. 1 passed" "$work/vm.log" || status=1
[[ $(sha256sum <"$work/golden.img") == "$before" ]] || { echo "test-vm-initiator: the golden image changed" >&2; status=1; }
grep -a "logged in to iqn.2024-01.lan.vm:pc-vm" "$work/run/serve.log" | tail -2 || true
if ((status)); then echo "test-vm-initiator: FAILED" >&2; else echo "test-vm-initiator: 1 passed (open-iscsi in the VM, cowctl serve on the host)"; fi
exit $status
