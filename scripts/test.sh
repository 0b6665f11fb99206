#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine with a Rust toolchain (>= 1.89):
# installs what it needs, checks formatting and lints, runs the host tests, runs the
# kernel tests in a qemu VM with Debian's stock kernel, and shows that the tests catch a
# deliberately broken on-disk format. Run as root (apt-get, loop devices in the VM).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

command -v cargo >/dev/null || { echo "test: cargo not found; install Rust >= 1.89 (rustup)" >&2; exit 1; }
scripts/provision.sh --tests # build and test packages (libdevmapper-dev, qemu, open-iscsi, ...)
scripts/vm.sh prepare        # the VM kernel and initramfs

echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings

echo "== host tests"
log=$(mktemp)
cargo test --release 2>&1 | tee "$log"
host_passed=$(grep -aoE 'test result: ok\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
# tests/host_http_service.rs renders the dashboard in headless Chromium and keeps a screenshot.
[[ -s test-outputs/dashboard.png ]] || { echo "test: no dashboard screenshot in test-outputs/" >&2; exit 1; }
echo "test: dashboard screenshot kept in $repo/test-outputs/dashboard.png"

echo "== monitoring rules"
promtool check rules contrib/prometheus/cowctl-alerts.yml
promtool test rules contrib/prometheus/cowctl-alerts.test.yml

echo "== fuzzing every wire parser, briefly (scripts/fuzz.sh runs 10^6 per target)"
FUZZ_EXECS=20000 scripts/fuzz.sh

echo "== the boot storm benchmark runs (tiny: 1 and 3 PCs, 8 MiB each; scripts/bench-boot-storm.sh for the table)"
BENCH_STORM_NS="1 3" BENCH_STORM_READ_MIB=8 BENCH_STORM_WRITE_MIB=2 scripts/bench-boot-storm.sh | tail -n 4

echo "== the image commit benchmark runs (tiny: 1 GiB images on xfs and ext4; scripts/bench-image-commit.sh for the table)"
BENCH_COMMIT_MIB=1024 BENCH_COMMIT_DATA_MIB=256 BENCH_COMMIT_CHANGED_MIB=64 scripts/bench-image-commit.sh 2>/dev/null | tail -n 3

echo "== kernel tests (VM)"
scripts/test-kernel.sh | tee "$log"
kernel_passed=$(sed -n 's/^kernel: \([0-9]*\) passed.*/\1/p' "$log")

echo "== open-iscsi in the VM against cowctl serve on this host"
scripts/test-vm-initiator.sh | tee "$log"
grep -q "^test-vm-initiator: 1 passed" "$log"
kernel_passed=$((kernel_passed + 1))

echo "== the VM's kernel maps rbd clones from a Ceph cluster on this host and LIO exports them"
scripts/test-vm-rbd.sh | tee "$log"
grep -q "^test-vm-rbd: 1 passed" "$log"
kernel_passed=$((kernel_passed + 1))

echo "== a qemu PC on this host boots from the kernel backend's LIO export in the VM"
scripts/test-vm-pc-boot.sh | tee "$log"
grep -q "^test-vm-pc-boot: 1 passed" "$log"
kernel_passed=$((kernel_passed + 1))

echo "== iSCSI conformance: libiscsi's iscsi-test-cu against cowctl and tgt"
scripts/test-iscsi-conformance.sh

echo "== the README main command, on this machine"
if [[ -e /dev/mapper/control ]]; then
    echo "test: this kernel has device-mapper: the demo serves the room with the kernel (checked in the VM above)"
else
    # Without device-mapper the demo serves the room over iSCSI and NBD, boots a PC, and
    # leaves the service running.
    demo_log=$(mktemp)
    scripts/demo.sh >"$demo_log" 2>&1 || { cat "$demo_log"; exit 1; }
    grep -q "nbdinfo nbd://127.0.0.1:10809/pc-01" "$demo_log" || { cat "$demo_log"; echo "test: the demo printed no connect line" >&2; exit 1; }
    nbdinfo --size nbd://127.0.0.1:10809/pc-01 | grep -qx 67108864
    grep -qE '^OK [0-9]+ 262144$' "$demo_log" || { cat "$demo_log"; echo "test: the demo's CowBell line is missing" >&2; exit 1; }
    # The counter lives in pc-01's COW, so an earlier demo run on this machine starts it higher:
    # what must hold is two boots, each counting one more than the last.
    mapfile -t boots < <(sed -n 's/^cowctl-boot counter=\([0-9]*\)$/\1/p' "$demo_log")
    [[ ${#boots[@]} -eq 2 && ${boots[1]} -eq $((boots[0] + 1)) ]] || { cat "$demo_log"; echo "test: the demo's PC did not boot twice over iSCSI (counters: ${boots[*]:-none})" >&2; exit 1; }
    # The PXE boot: two boots through dnsmasq, iPXE and /boot.ipxe, both fresh (reset on boot).
    [[ $(grep -c '^pc-px: cowctl-boot counter=1$' "$demo_log") -eq 2 ]] || { cat "$demo_log"; echo "test: the demo's PC did not PXE-boot twice through the chain" >&2; exit 1; }
    grep -q 'DHCPACK(cowdemo0) 10.213.0.11 52:54:00:de:00:01 demo-px' "$demo_log" || { cat "$demo_log"; echo "test: dnsmasq did not lease the demo PC its address and name" >&2; exit 1; }
    COWCTL_MANIFEST=manifests/demo.yaml target/release/cowctl down >/dev/null
    echo "test: scripts/demo.sh served the demo room over iSCSI, NBD and HTTP; a qemu PC booted pc-01 twice; another PXE-booted through dnsmasq, iPXE and /boot.ipxe twice; nbdinfo reached pc-01"
fi

echo "== the systemd unit"
if command -v systemd-analyze >/dev/null; then
    unit_dir=$(mktemp -d)
    sed "s#/usr/local/bin/cowctl#$repo/target/release/cowctl#" scripts/systemd/cowctl-serve.service >"$unit_dir/cowctl-serve.service"
    systemd-analyze verify "$unit_dir/cowctl-serve.service"
    echo "test: systemd-analyze verify accepts scripts/systemd/cowctl-serve.service"
else
    echo "test: no systemd-analyze here; the unit was not verified"
fi

echo "== the Debian package (scripts/deb.sh): installed, upgraded over itself and removed with apt-get, in the VM"
deb_dir=$(mktemp -d -p "$repo/target" debian.XXXX)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
COWCTL_SKIP_BUILD=1 scripts/deb.sh "$deb_dir/old" >/dev/null
COWCTL_SKIP_BUILD=1 COWCTL_DEB_VERSION="$version+1" scripts/deb.sh "$deb_dir/new" >/dev/null
scripts/vm.sh run "$repo/scripts/vm/deb-check.sh" "$deb_dir/old/cowctl_${version}_amd64.deb" "$deb_dir/new/cowctl_${version}+1_amd64.deb" |
    sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a "deb-check:"
rm -rf "$deb_dir"

echo "== the Vagrant provisioning, in the VM"
scripts/vm.sh run scripts/vm/vagrant-check.sh | sed -u 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -a "vagrant-check:"

echo "== the tests catch a broken format"
scripts/check-tests-catch-breakage.sh

echo "total: $((host_passed + kernel_passed)) passed, 0 failed"
