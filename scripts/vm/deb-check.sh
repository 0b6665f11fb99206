#!/usr/bin/env bash
# In the test VM (this machine's root under a throwaway overlay, so dpkg's database and the
# packages cowctl depends on are already there): installs the package with apt-get, checks
# what it put where, upgrades it over itself with the admin's manifest edited, removes it,
# and checks that the manifest, the images and the COW files are all still there.
#
#   scripts/vm/deb-check.sh OLD.deb NEW.deb
set -euo pipefail
old=$(realpath "$1") new=$(realpath "$2")
export DEBIAN_FRONTEND=noninteractive
logs=${COWCTL_RESULTS:-/tmp}
started=$SECONDS
fail() { echo "deb-check: FAIL: $*" >&2; exit 1; }
say() { echo "deb-check: [$((SECONDS - started)) s] $*"; }
apt() { apt-get -o Dpkg::Use-Pty=0 -o APT::Get::List-Cleanup=0 -q -y "$@"; }

# Not what an admin does, only quicker: man-db's trigger skips rebuilding its whole index
# (minutes in the VM); `man cowctl-reset` below finds the page by its path all the same.
rm -f /var/lib/man-db/auto-update
say "installing $old"
apt install "$old" >"$logs/deb-install.log" 2>&1 || { cat "$logs/deb-install.log"; fail "apt-get install $old"; }
[[ $(dpkg-query -W -f '${Status} ${Version}' cowctl) == "install ok installed $(dpkg-deb -f "$old" Version)" ]] ||
    fail "dpkg does not list cowctl as installed: $(dpkg-query -W -f '${Status} ${Version}' cowctl 2>&1)"
say "installed"
/usr/bin/cowctl --version | grep -q '^cowctl ' || fail "/usr/bin/cowctl --version"
# The example manifest is the default one and is valid as shipped.
/usr/bin/cowctl validate | grep -q "^/etc/cowctl/cowctl.yaml: valid, 14 PC(s)" || fail "cowctl validate of the shipped manifest"
systemd-analyze verify /lib/systemd/system/cowctl-serve.service || fail "systemd-analyze verify cowctl-serve.service"
grep -qx 'ExecStart=/usr/bin/cowctl serve' /lib/systemd/system/cowctl-serve.service || fail "the unit does not run /usr/bin/cowctl"
grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' /lib/systemd/system/cowctl-serve.service || fail "the unit's reload is not the planned restart (SIGHUP)"
# A man page per command, found by man through the standard path.
man -P cat cowctl-reset 2>/dev/null | grep -q "cowctl-reset" || fail "man cowctl-reset"
man -P cat cowctl 2>/dev/null | grep -q "cowctl-image(1)" || fail "man cowctl lists no subcommand pages"
man -P cat cowctl-image-commit 2>/dev/null | grep -q -- "--pause" || fail "man cowctl-image-commit"
pages=$(dpkg -L cowctl | grep -c '^/usr/share/man/man1/cowctl.*\.1\.gz$')
((pages >= 20)) || fail "only $pages man pages"
# bash completes a PC name from the installed manifest through the installed script.
completed=$(PATH=/usr/bin:/bin bash --norc --noprofile -c '
    source /usr/share/bash-completion/completions/cowctl || exit 1
    COMP_WORDS=(cowctl reset pc-1); COMP_CWORD=2; COMP_LINE="cowctl reset pc-1"
    COMP_POINT=${#COMP_LINE}; COMP_TYPE=9
    _clap_complete_cowctl cowctl pc-1 reset
    printf "%s\n" "${COMPREPLY[@]}"')
[[ $completed == $'pc-10\npc-11\npc-12\npc-13\npc-14' ]] || fail "bash completed 'cowctl reset pc-1' as: ${completed:-nothing}"
[[ -s /usr/share/zsh/vendor-completions/_cowctl && -s /usr/share/fish/vendor_completions.d/cowctl.fish ]] ||
    fail "zsh or fish completions missing"

# The admin's edits, a golden image and a PC's COW: the package never owned these.
echo "# edited by the admin on $(date -u +%F)" >>/etc/cowctl/cowctl.yaml
manifest_sum=$(sha256sum /etc/cowctl/cowctl.yaml)
mkdir -p /srv/cowctl/images /srv/cowctl/cow
head -c 1M /dev/urandom >/srv/cowctl/images/win10.img
/usr/bin/cowctl cow create /srv/cowctl/cow/pc-01.cow --size 4MiB >/dev/null
data_sum=$(sha256sum /srv/cowctl/images/win10.img /srv/cowctl/cow/pc-01.cow)

say "upgrading to $new"
apt install "$new" >"$logs/deb-upgrade.log" 2>&1 || { cat "$logs/deb-upgrade.log"; fail "apt-get install $new over $old"; }
[[ $(dpkg-query -W -f '${Version}' cowctl) == "$(dpkg-deb -f "$new" Version)" ]] || fail "the upgrade did not take"
[[ $(sha256sum /etc/cowctl/cowctl.yaml) == "$manifest_sum" ]] || fail "the upgrade changed the admin's /etc/cowctl/cowctl.yaml"
! ls /etc/cowctl/cowctl.yaml.dpkg-* 2>/dev/null || fail "the upgrade left a .dpkg-* file beside the manifest"

say "removing"
apt remove cowctl >"$logs/deb-remove.log" 2>&1 || { cat "$logs/deb-remove.log"; fail "apt-get remove cowctl"; }
[[ ! -e /usr/bin/cowctl && ! -e /lib/systemd/system/cowctl-serve.service ]] || fail "remove left the binary or the unit"
[[ $(sha256sum /etc/cowctl/cowctl.yaml) == "$manifest_sum" ]] || fail "remove changed the manifest"
[[ $(sha256sum /srv/cowctl/images/win10.img /srv/cowctl/cow/pc-01.cow) == "$data_sum" ]] || fail "remove touched the image or the COW"
echo "deb-check: installed $(dpkg-deb -f "$old" Version), upgraded to $(dpkg-deb -f "$new" Version) with the edited manifest kept, removed with the manifest, image and COW kept; $pages man pages"
echo "deb-check: ok"
