#!/usr/bin/env bash
# Provisions the Vagrant VM (Debian 12): the same packages as the test VM
# (scripts/provision.sh), a Rust toolchain, cowctl installed to /usr/local/bin, a sparse
# demo golden image and CHAP secret where manifests/example.yaml expects them, and the
# example manifest applied: 14 PCs served over iSCSI on 10.0.0.1:3260.
set -euo pipefail
repo=${1:-/vagrant}
"$repo/scripts/provision.sh"
export PATH=$HOME/.cargo/bin:$PATH
if ! command -v cargo >/dev/null; then
    apt-get install -y -qq curl ca-certificates >/dev/null
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
fi
# COWCTL_SKIP_BUILD=1 reuses a build already in target/ (the test VM shares the host's).
[[ -n ${COWCTL_SKIP_BUILD:-} ]] || (cd "$repo" && cargo build --release --locked)
install -m 0755 "$repo/target/release/cowctl" /usr/local/bin/cowctl
install -d -m 0755 /etc/cowctl /srv/cowctl/images /srv/cowctl/cow
[[ -e /srv/cowctl/images/win10.img ]] || truncate -s 8G /srv/cowctl/images/win10.img # stands in for a real image
[[ -e /etc/cowctl/chap.secret ]] || (umask 077 && head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n' >/etc/cowctl/chap.secret)
install -m 0644 "$repo/manifests/example.yaml" /etc/cowctl/cowctl.yaml
cowctl validate
cowctl apply
cowctl status || true # exits 2 only when a PC needs attention
