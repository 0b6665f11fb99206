#!/usr/bin/env bash
# Time to a booted OS: the real Linux of scripts/real-os/build.sh, from power-on to its init's
# report (firmware, iPXE's sanboot, boot loader, kernel, the initramfs's iSCSI login from the
# iBFT, the root mounted, a file checked, written and synced), over cowctl's userspace iSCSI
# target (a fresh COW each time) and over tgt serving a fresh copy of the same image, on BIOS
# and UEFI PCs (scripts/real-os/boot-pc.sh: qemu under TCG, so these are this machine's
# times, not a real PC's); then N BIOS PCs booting at once, each its own disk. One run, the
# same machine; the PCs' iPXE scripts sanboot their disks directly (no CHAP), the same for
# both targets. Prints a table with the ratio tgt ÷ cowctl (above 1: cowctl is faster).
#   scripts/bench-real-os.sh       (BENCH_OS_STORM="5 10", BENCH_OS_ROUNDS=2)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/provision.sh --tests
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh
read -r -a storms <<<"${BENCH_OS_STORM:-5 10}"
rounds=${BENCH_OS_ROUNDS:-2}
max=1
for n in "${storms[@]}"; do ((n > max)) && max=$n; done
work=$(mktemp -d /var/tmp/cowctl-bench-os.XXXXXX)
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
trap 'stop_tgt; target/release/cowctl down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
scripts/real-os/build.sh "$work/golden.img" >/dev/null
prefix=iqn.2024-01.lan.bench-os

# cowctl: a room of $max PCs on the golden image, open ACL.
read -r port nbd < <(free_ports 2)
mkdir -p "$work/cow"
{
    printf 'backend: userspace\nimages:\n  g:\n    path: %s/golden.img\n' "$work"
    printf 'defaults:\n  image: g\n  cow_dir: %s/cow\n  cow_size: 64MiB\n  chunk: 4KiB\n' "$work"
    printf 'iscsi:\n  iqn_prefix: %s\n  portals: ["127.0.0.1:%s"]\n  acl: open\n' "$prefix" "$port"
    printf 'nbd:\n  listen: 127.0.0.1:%s\n  socket: %s/nbd.sock\npcs:\n' "$nbd" "$work"
    for i in $(seq "$max"); do printf '  - name: os-%03d\n' "$i"; done
} >"$COWCTL_MANIFEST"
target/release/cowctl apply >/dev/null

# tgt: $max targets, each LUN 1 a copy of the golden image (tgt has no COW).
tport=$(free_port)
control=$((20000 + RANDOM % 10000))
tgtd -C "$control" -f --iscsi "portal=127.0.0.1:$tport" >"$work/tgt.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 50); do tgtadm -C "$control" --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq "$max"); do
    cp --sparse=always "$work/golden.img" "$work/tgt-$i.img"
    tgtadm -C "$control" --lld iscsi --op new --mode target --tid "$i" -T "$prefix:tgt-$i"
    tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid "$i" --lun 1 -b "$work/tgt-$i.img"
    tgtadm -C "$control" --lld iscsi --op bind --mode target --tid "$i" -I ALL
done

# script TARGET I: the iPXE script of PC I on cowctl or tgt.
script() {
    local f=$work/$1-$2.ipxe
    if [[ $1 == cowctl ]]; then
        printf '#!ipxe\nsanboot iscsi:10.0.2.2::%s::%s:os-%03d\n' "$port" "$prefix" "$2" >"$f"
    else
        printf '#!ipxe\nsanboot iscsi:10.0.2.2::%s:1:%s:tgt-%s\n' "$tport" "$prefix" "$2" >"$f"
    fi
    echo "$f"
}
# fresh TARGET N: PCs 1..N back on the golden image.
fresh() {
    local i
    for i in $(seq "$2"); do
        if [[ $1 == cowctl ]]; then
            target/release/cowctl reset "$(printf os-%03d "$i")" >/dev/null
        else
            cp --sparse=always "$work/golden.img" "$work/tgt-$i.img"
        fi
    done
}
# boot FIRMWARE TARGET I: seconds to the OS's report.
boot() {
    local out
    out=$(scripts/real-os/boot-pc.sh "$1" "$(script "$2" "$3")" boot 600) || { echo "bench-real-os: $1 PC $3 on $2 failed" >&2; exit 1; }
    sed -n 's/.* took=\([0-9.]*\)$/\1/p' <<<"$out"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f×", a / b }'; }

echo "| boot | cowctl | tgt | tgt ÷ cowctl |"
echo "|---|---|---|---|"
for fw in bios uefi; do
    declare -A took=()
    for t in cowctl tgt; do
        for _ in $(seq "$rounds"); do
            fresh "$t" 1
            boot "$fw" "$t" 1
        done | median >"$work/m"
        took[$t]=$(cat "$work/m")
    done
    printf '| one %s PC | %.1f s | %.1f s | %s |\n' "${fw^^}" "${took[cowctl]}" "${took[tgt]}" "$(ratio "${took[tgt]}" "${took[cowctl]}")"
done
for n in "${storms[@]}"; do
    declare -A slowest=()
    for t in cowctl tgt; do
        fresh "$t" "$n"
        pcs=()
        for i in $(seq "$n"); do
            boot bios "$t" "$i" >"$work/took-$t-$i" &
            pcs+=($!)
        done
        wait "${pcs[@]}" || true
        for i in $(seq "$n"); do [[ -s $work/took-$t-$i ]] || { echo "bench-real-os: PC $i of $n on $t did not boot" >&2; exit 1; }; done
        slowest[$t]=$(cat "$work"/took-"$t"-* | sort -n | tail -n 1)
        rm -f "$work"/took-"$t"-*
    done
    printf '| %s BIOS PCs at once (the last one) | %.1f s | %.1f s | %s |\n' "$n" "${slowest[cowctl]}" "${slowest[tgt]}" \
        "$(ratio "${slowest[tgt]}" "${slowest[cowctl]}")"
done
