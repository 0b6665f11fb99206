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
    echo; echo "== pc-01 writes 8 MiB over NBD and flushes"
    say qemu-io -f raw -c 'write -P 0x55 0 8M' -c flush nbd://127.0.0.1:10809/pc-01
fi
say cowctl status || true
if command -v curl >/dev/null; then
    echo; echo "== this machine is pc-01's address: CowBell's question, and the metrics"
    say curl -s http://127.0.0.1:8080/cow; echo
    say curl -s http://127.0.0.1:8081/metrics | grep -E '^cowctl_cow_(used|total)_bytes' || true
fi
cat <<INFO

cowctl serve is running (log: /run/cowctl/serve.log). Connect to a PC's disk:
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
