#!/usr/bin/env bash
# Builds the Debian package with Debian's own tools (dpkg-shlibdeps, dpkg-deb):
#
#   scripts/deb.sh [OUT_DIR]     -> OUT_DIR/cowctl_<version>_amd64.deb (default: target/debian)
#
# It holds /usr/bin/cowctl (the release build), the systemd unit cowctl-serve.service,
# a man page per command, bash/zsh/fish completions, and manifests/example.yaml as
# /etc/cowctl/cowctl.yaml, a conffile: dpkg never overwrites an admin's edits on upgrade.
# Removing the package leaves COW files, images and versions alone (it never owned them).
# COWCTL_DEB_VERSION overrides the version (Cargo.toml's by default); COWCTL_SKIP_BUILD=1
# packages target/release/cowctl as it is.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$repo/target/debian}")
cd "$repo"

version=${COWCTL_DEB_VERSION:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)}
[[ -n $version ]] || { echo "deb: no version in Cargo.toml" >&2; exit 1; }
arch=$(dpkg --print-architecture)
[[ ${COWCTL_SKIP_BUILD:-0} == 1 ]] || cargo build --release --locked >&2
bin=target/release/cowctl
[[ -x $bin ]] || { echo "deb: $bin is missing: build it (cargo build --release)" >&2; exit 1; }

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/cowctl" \
    "$root/usr/share/man/man1" "$root/usr/share/doc/cowctl" \
    "$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" \
    "$root/usr/share/fish/vendor_completions.d"
install -m 0755 "$bin" "$root/usr/bin/cowctl"
strip --strip-unneeded "$root/usr/bin/cowctl"
{
    echo "# cowctl serve: installed by the cowctl package, not enabled. Describe the room in"
    echo "# /etc/cowctl/cowctl.yaml, then: systemctl enable --now cowctl-serve. \`cowctl apply\`"
    echo "# applies manifests through its control socket; \`systemctl reload\` hands every"
    echo "# socket and session to the binary on disk; \`systemctl stop\` commits every COW first."
    sed -e '1,/^\[Unit\]/{/^#/d}' -e 's#/usr/local/bin/cowctl#/usr/bin/cowctl#' scripts/systemd/cowctl-serve.service
} >"$root/lib/systemd/system/cowctl-serve.service"
chmod 0644 "$root/lib/systemd/system/cowctl-serve.service"
install -m 0644 manifests/example.yaml "$root/etc/cowctl/cowctl.yaml"
"$bin" generate man "$stage/man" >/dev/null
for page in "$stage"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
"$bin" generate completions bash >"$root/usr/share/bash-completion/completions/cowctl"
"$bin" generate completions zsh >"$root/usr/share/zsh/vendor-completions/_cowctl"
"$bin" generate completions fish >"$root/usr/share/fish/vendor_completions.d/cowctl.fish"
install -m 0644 README.md "$root/usr/share/doc/cowctl/README.md"
cp -r docs "$root/usr/share/doc/cowctl/docs"
cp -r contrib "$root/usr/share/doc/cowctl/contrib"
cat >"$root/usr/share/doc/cowctl/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: cowctl

Files: *
License: MIT or Apache-2.0
COPYRIGHT
find "$root/usr/share" -type f -exec chmod 0644 {} +
find "$root/usr/share" -type d -exec chmod 0755 {} +

# The shared libraries the binary links, as Debian states them.
mkdir -p "$stage/debian"
printf 'Source: cowctl\n\nPackage: cowctl\nArchitecture: any\n' >"$stage/debian/control"
shlibs=$(cd "$stage" && dpkg-shlibdeps -O -e"root/usr/bin/cowctl" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[[ -n $shlibs ]] || { echo "deb: dpkg-shlibdeps found no libraries for cowctl" >&2; exit 1; }
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)

# Depends: what every command may call (modprobe, mount). Recommends: what the common
# features call: qemu-img for images in other formats, dnsmasq and iPXE for PXE.
# Suggests: the kernel backend's AoE exports (vblade), the initiators to try a PC's disk, and Ceph's
# client library for storage: rbd (loaded at run time, only by rooms that use it).
cat >"$root/DEBIAN/control" <<CONTROL
Package: cowctl
Version: $version
Architecture: $arch
Maintainer: cowctl developers <cowctl@localhost>
Installed-Size: $size
Depends: $shlibs, kmod, mount
Recommends: qemu-utils, dnsmasq-base, ipxe
Suggests: vblade, nbd-client, open-iscsi, librbd1
Section: admin
Priority: optional
Description: serve many diskless PCs from one golden disk image
 cowctl gives each PC of a room its own writable view of one golden image: a
 sparse copy-on-write file in device-mapper's snapshot format, reset in constant
 time, served by the kernel (loop, dm-snapshot, LIO iSCSI or vblade AoE) or by
 its own engine over iSCSI, AoE and NBD. One YAML manifest describes the room;
 cowctl plans and applies it, keeps image versions, PXE-boots the PCs with
 dnsmasq and iPXE, wakes them, and serves an HTTP dashboard and metrics.
CONTROL
echo "/etc/cowctl/cowctl.yaml" >"$root/DEBIAN/conffiles"

# The unit is installed, not enabled: the example manifest must first describe the room.
cat >"$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    # An upgrade: the running service hands every socket and session to the new binary
    # (SIGHUP), so the room's PCs see a pause, not a broken connection.
    if systemctl is-active --quiet cowctl-serve.service; then
        systemctl reload cowctl-serve.service || systemctl restart cowctl-serve.service || true
    fi
fi
SCRIPT
# Stopping the service commits every COW; the COW files themselves stay.
cat >"$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
    systemctl stop cowctl-serve.service || true
fi
SCRIPT
cat >"$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
SCRIPT
chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"

mkdir -p "$out"
deb=$out/cowctl_${version}_$arch.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
