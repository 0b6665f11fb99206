#!/usr/bin/env bash
# Guest side of scripts/bench-room.sh: cowctl's kernel backend for rooms of 10 to 200 iSCSI
# PCs, against the seed's steps done by hand in this shell (losetup, dmsetup create, configfs
# mkdir/echo per PC, dmsetup status per PC, the same teardown), measured in the same run.
# Between the steps every PC must read the golden image and nothing may be left behind.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cowctl=$repo/target/release/cowctl
sizes=${BENCH_ROOM_SIZES:-10 50 100 200}
modprobe loop
modprobe dm-snapshot
modprobe target_core_iblock
modprobe iscsi_target_mod
mountpoint -q /sys/kernel/config || mount -t configfs none /sys/kernel/config
ip link set lo up
lio=/sys/kernel/config/target
work=$(mktemp -d)
export COWCTL_RUN_DIR=$work/run
# 64 MiB, the first MiB random: what each PC must read back after apply and reset.
head -c 1M /dev/urandom >"$work/golden.img"
truncate -s 64M "$work/golden.img"
head_sum=$(head -c 1M "$work/golden.img" | md5sum)

now() { date +%s%N; }
ms() { echo $((($(now) - $1) / 1000000)); }
fail() { echo "bench-room: $*" >&2; exit 1; }

manifest() { # N
    cat <<YAML
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work/cow
  cow_size: 32MiB
  chunk: 32KiB
iscsi:
  iqn_prefix: iqn.2024-01.lan.bench
  portals: ["127.0.0.1:3260"]
  acl: open
pcs:
YAML
    for i in $(seq -f %03g "$1"); do echo "  - name: pc-$i"; done
}

# Every PC's device reads the golden image's first MiB.
check_golden() { # N prefix
    for i in $(seq -f %03g "$1"); do
        local minor
        minor=$(dmsetup info -c --noheadings -o minor "$2$i" | tr -d ' ')
        [[ $(head -c 1M "/dev/dm-$minor" | md5sum) == "$head_sum" ]] || fail "$2$i does not read the golden image"
    done
}

# Nothing of a room may be left: no loop, dm device or configfs object.
check_clean() {
    [[ -z $(losetup -a) ]] || fail "loops left: $(losetup -a)"
    [[ -z $(dmsetup ls | grep -v '^No devices') ]] || fail "dm devices left: $(dmsetup ls)"
    [[ -z $(ls "$lio/iscsi" 2>/dev/null | grep '^iqn') ]] || fail "iSCSI targets left"
    [[ -z $(ls "$lio/core" 2>/dev/null | grep '^iblock') ]] || fail "backstores left"
}

declare -A shell_cow
shell_image=
# The seed's way, by hand: what cowctl apply does for an open iSCSI room, one command each.
shell_apply() { # N
    mkdir -p "$work/shell"
    local minor
    shell_image=$(losetup -f --show -r "$work/golden.img")
    for i in $(seq -f %03g "$1"); do
        truncate -s 32M "$work/shell/pc-$i.cow"
        shell_cow[$i]=$(losetup -f --show "$work/shell/pc-$i.cow")
        dmsetup create "shell-$i" --table "0 131072 snapshot $shell_image ${shell_cow[$i]} P 64"
        minor=$(dmsetup info -c --noheadings -o minor "shell-$i" | tr -d ' ')
        local so=$lio/core/iblock_$((10#$i))/shell-$i
        mkdir -p "$so"
        echo "udev_path=/dev/dm-$minor" >"$so/control"
        echo "/dev/dm-$minor" >"$so/udev_path"
        echo 1 >"$so/enable"
        local tpg=$lio/iscsi/iqn.2024-01.lan.shell:pc-$i/tpgt_1
        mkdir -p "$tpg/lun/lun_0"
        ln -s "$so" "$tpg/lun/lun_0/shell-$i"
        mkdir "$tpg/np/127.0.0.1:3260"
        echo 1 >"$tpg/attrib/generate_node_acls"
        echo 1 >"$tpg/attrib/cache_dynamic_acls"
        echo 0 >"$tpg/attrib/demo_mode_write_protect"
        echo 0 >"$tpg/attrib/authentication"
        echo 1 >"$tpg/enable"
    done
}

shell_status() { # N
    for i in $(seq -f %03g "$1"); do dmsetup status "shell-$i" >/dev/null; done
}

shell_down() { # N
    for i in $(seq -f %03g "$1"); do
        local tpg=$lio/iscsi/iqn.2024-01.lan.shell:pc-$i/tpgt_1
        echo 0 >"$tpg/enable"
        rm "$tpg/lun/lun_0/shell-$i"
        rmdir "$tpg/lun/lun_0" "$tpg/np/127.0.0.1:3260" "$tpg" "$lio/iscsi/iqn.2024-01.lan.shell:pc-$i"
        rmdir "$lio/core/iblock_$((10#$i))/shell-$i" "$lio/core/iblock_$((10#$i))"
        dmsetup remove "shell-$i"
        losetup -d "${shell_cow[$i]}"
    done
    losetup -d "$shell_image"
    rm -rf "$work/shell"
}

# The fastest of three runs of a command (ms); the command's output is dropped.
best3() {
    local best=
    for _ in 1 2 3; do
        local t
        t=$(now)
        "$@" >/dev/null
        t=$(ms "$t")
        [[ -z $best || $t -lt $best ]] && best=$t
    done
    echo "$best"
}

# One reset's pause (ms, from cowctl's own report), the median of five PCs'.
reset_pause() {
    local pauses=()
    for pc in pc-001 pc-002 pc-003 pc-004 pc-005; do
        pauses+=("$("$cowctl" --json reset "$pc" | python3 -c 'import json,sys; print(round(json.load(sys.stdin)[0]["seconds"] * 1000, 1))')")
    done
    printf '%s\n' "${pauses[@]}" | sort -n | sed -n 3p
}

declare -A r
for n in $sizes; do
    manifest "$n" >"$work/room.yaml"
    export COWCTL_MANIFEST=$work/room.yaml
    mkdir -p "$work/cow"
    t=$(now); COWCTL_STEP_TIMES=1 "$cowctl" apply >/dev/null 2>"$work/apply.times"; r[$n,apply]=$(ms "$t")
    check_golden "$n" cowctl-pc-
    t=$(now); "$cowctl" apply >/dev/null; r[$n,noop]=$(ms "$t")
    r[$n,status]=$(best3 "$cowctl" status)
    r[$n,status1]=$(best3 "$cowctl" status pc-007)
    r[$n,pause]=$(reset_pause)
    t=$(now); "$cowctl" reset --all >"$work/reset.out"; r[$n,resetall]=$(ms "$t")
    check_golden "$n" cowctl-pc-
    t=$(now); COWCTL_STEP_TIMES=1 "$cowctl" down >/dev/null 2>"$work/down.times"; r[$n,down]=$(ms "$t")
    check_clean
    sed "s/^/bench-room: $n PCs apply /" "$work/apply.times" >&2
    sed "s/^/bench-room: $n PCs down /" "$work/down.times" >&2
    rm -rf "$work/cow" "$work/run"

    t=$(now); shell_apply "$n"; r[$n,sh_apply]=$(ms "$t")
    check_golden "$n" shell-
    r[$n,sh_status]=$(best3 shell_status "$n")
    t=$(now); shell_down "$n"; r[$n,sh_down]=$(ms "$t")
    check_clean
    echo "bench-room: $n PCs: cowctl apply ${r[$n,apply]} ms, down ${r[$n,down]} ms; shell ${r[$n,sh_apply]} / ${r[$n,sh_down]} ms" >&2
done

ratio() { python3 -c "print(f'{$1 / max($2, 0.1):.2f}×')"; }
echo "| PCs | apply (shell) | apply ÷ shell | apply again | status of the room (dmsetup status loop) | status ÷ loop | status of one PC | one reset's pause | reset --all | down (shell) | down ÷ shell |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
first=${sizes%% *}
for n in $sizes; do
    echo "| $n | ${r[$n,apply]} ms (${r[$n,sh_apply]} ms) | $(ratio "${r[$n,apply]}" "${r[$n,sh_apply]}") | ${r[$n,noop]} ms | ${r[$n,status]} ms (${r[$n,sh_status]} ms) | $(ratio "${r[$n,status]}" "${r[$n,sh_status]}") | ${r[$n,status1]} ms | ${r[$n,pause]} ms | ${r[$n,resetall]} ms | ${r[$n,down]} ms (${r[$n,sh_down]} ms) | $(ratio "${r[$n,down]}" "${r[$n,sh_down]}") |"
done
last=${sizes##* }
echo "bench-room: one reset's pause at $last PCs ÷ at $first PCs: $(ratio "${r[$last,pause]}" "${r[$first,pause]}")"
rm -rf "$work"
echo "bench-room: done"
