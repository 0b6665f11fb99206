#!/usr/bin/env bash
# In the test VM (scripts/test-vm-pc-boot.sh): a kernel-backend room of one PC whose golden
# image is the real Linux of scripts/real-os/build.sh (COWCTL_TEST_GOLDEN, built on the host),
# exported by `cowctl apply` with LIO (CHAP and the initiator ACL) and its boot script served
# by `cowctl serve`, both on ports qemu forwards from the host, where qemu PCs boot it. The host asks
# for commands (a live reset) through files in the results share; at the end the golden
# image must be unchanged and down must leave nothing behind.
set -euo pipefail
repo=${COWCTL_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
cowctl=$repo/target/release/cowctl
results=$COWCTL_RESULTS
iscsi=$COWCTL_TEST_ISCSI_PORT http=$COWCTL_TEST_HTTP_PORT
work=$(mktemp -d)
modprobe dm-snapshot
modprobe target_core_mod
modprobe iscsi_target_mod
cp --sparse=always "$COWCTL_TEST_GOLDEN" "$work/golden.img"
before=$(sha256sum <"$work/golden.img")
mkdir "$work/cow"
(umask 077 && echo "vm-pc-boot-master-secret" >"$work/chap.secret")
# The PC is on the host's qemu user network: its connections reach this VM through the
# host's port forwards, arriving from 10.0.2.2, and it reaches the host at 10.0.2.2.
cat >"$work/room.yaml" <<YAML
backend: kernel
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work/cow
  cow_size: 64MiB
  chunk: 4KiB
iscsi:
  iqn_prefix: iqn.2024-01.lan.vmboot
  portals: ["0.0.0.0:$iscsi"]
  acl: initiator
  chap:
    username: room
    secret_file: $work/chap.secret
http:
  listen: 0.0.0.0:$http
  admin_listen: 127.0.0.1:$((http + 1))
  server: 10.0.2.2
pcs:
  - name: pc-01
    ip: 10.0.2.2
    initiator: iqn.2024-01.lan.vmboot:init-pc-01
YAML
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
"$cowctl" apply
"$cowctl" serve >"$work/serve.log" 2>&1 &
serve=$!
for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$((http + 1))/api/v1/pcs" && break
    sleep 0.2
done
echo "pc-boot-guest: serving pc-01 over LIO on :$iscsi, /boot.ipxe on :$http"
touch "$results/ready"
# Commands from the host: cmd.N holds cowctl's arguments, or "stop".
n=1
while true; do
    if [[ -f $results/cmd.$n ]]; then
        args=$(cat "$results/cmd.$n")
        [[ $args == stop ]] && break
        # shellcheck disable=SC2086
        if "$cowctl" $args >"$results/out.$n" 2>&1; then echo 0 >"$results/done.$n"; else echo 1 >"$results/done.$n"; fi
        n=$((n + 1))
    fi
    sleep 0.2
done
kill "$serve"
wait "$serve" 2>/dev/null || true
ls /sys/kernel/config/target/iscsi/*/tpgt_1/acls/ | grep -q "init-pc-01" ||
    { echo "pc-boot-guest: no ACL for the PC's initiator name" >&2; exit 1; }
"$cowctl" down
[[ $(sha256sum <"$work/golden.img") == "$before" ]] || { echo "pc-boot-guest: the golden image changed" >&2; exit 1; }
[[ -z $(ls /sys/kernel/config/target/iscsi 2>/dev/null | grep iqn || true) ]] || { echo "pc-boot-guest: down left a target" >&2; exit 1; }
[[ -z $(dmsetup ls | grep cowctl- || true) ]] || { echo "pc-boot-guest: down left a dm device" >&2; exit 1; }
echo "pc-boot-guest: golden image unchanged; down left no target and no dm device"
