#!/usr/bin/env bash
# Runs the Vagrant provisioning script in the test VM (whose root is this machine's, so
# packages and the toolchain are already there), with 10.0.0.1 on a dummy interface as
# the Vagrantfile's private network would give, and checks that the example room is up.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ip link add cowlan type dummy
ip addr add 10.0.0.1/24 dev cowlan
ip link set cowlan up
COWCTL_SKIP_BUILD=1 "$repo/scripts/vagrant-provision.sh" "$repo" >"${COWCTL_RESULTS:-/tmp}/vagrant-provision.log"
cowctl --json status | python3 -c '
import json, sys
rows = json.load(sys.stdin)
assert len(rows) == 14, len(rows)
bad = [r["name"] for r in rows if r["state"] != "active"]
assert not bad, bad
print("vagrant-check: 14 PCs active:", ", ".join(r["name"] for r in rows))'
cowctl plan | grep -q "nothing to do"
cowctl down >/dev/null
echo "vagrant-check: ok"
