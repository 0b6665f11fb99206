#!/usr/bin/env bash
# The boot storm: N PCs boot at once (N = 1, 10, 50, 200), each an iSCSI session of its own
# to its own PC's disk (scripts/bench/boot-storm.c): the same 300 MiB of the golden image in
# one boot order for every PC, plus 50 MiB of 64 KiB writes scattered over each PC's disk and a
# SYNCHRONIZE CACHE. cowctl serve runs the whole boot, and the reads alone, on a fresh COW per
# PC each round (`cowctl reset --all`); tgt serves the same image to the same clients for the
# reads alone (it has no COW, so no PC may write to the golden image). Prints a table: the time
# until the last PC finishes, aggregate read throughput and its ratio to one PC's, and the
# server's memory per connected PC (resident size with every PC logged in, before the storm,
# minus before any, divided by N).
# BENCH_STORM_FS=xfs (or btrfs) puts the room and tgt's copy on that file system, made on a
# loop-mounted sparse file; BENCH_STORM_STORAGE=reflink then serves each PC a clone of the
# image instead of a COW (storage: reflink).
# BENCH_STORM_STORAGE=rbd starts a Ceph cluster (scripts/ceph/cluster.sh, one OSD on a sparse
# file) and serves each PC a clone of the image's snapshot in it (storage: rbd); tgt then
# serves each PC a clone of its own through its rbd backing store (Debian tgt-rbd).
#   scripts/bench-boot-storm.sh    (BENCH_STORM_NS="1 10 50 200" BENCH_STORM_READ_MIB=300 BENCH_STORM_WRITE_MIB=50)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/provision.sh --tests
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh
read -r -a ns <<<"${BENCH_STORM_NS:-1 10 50 200}"
read_mib=${BENCH_STORM_READ_MIB:-300} write_mib=${BENCH_STORM_WRITE_MIB:-50}
max=${ns[-1]}
work=$(mktemp -d /var/tmp/cowctl-storm.XXXXXX)
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
storage=${BENCH_STORM_STORAGE:-cow}
data=$work
trap 'stop_tgt; target/release/cowctl down >/dev/null 2>&1 || true; umount "$work/fs" 2>/dev/null || true; [[ $storage != rbd ]] || scripts/ceph/cluster.sh stop "$work/ceph" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
if [[ -n ${BENCH_STORM_FS:-} ]]; then
    truncate -s 64G "$work/fs.img"
    case $BENCH_STORM_FS in
        xfs) mkfs.xfs -q -f -m reflink=1 "$work/fs.img" ;;
        btrfs) mkfs.btrfs -q -f "$work/fs.img" ;;
        *) echo "bench-boot-storm: BENCH_STORM_FS is xfs or btrfs" >&2; exit 2 ;;
    esac
    mkdir "$work/fs"
    mount -o loop "$work/fs.img" "$work/fs"
    data=$work/fs
fi
gcc -O2 -Wall -pthread -o "$work/boot-storm" scripts/bench/boot-storm.c -liscsi
head -c $(((read_mib + 212) << 20)) /dev/urandom >"$data/golden.img"
cp "$data/golden.img" "$data/tgt.img" # tgt serves a copy: nothing may write the golden image
prefix=iqn.2024-01.lan.storm
read -r port nbd tport < <(free_ports 3)
mkdir "$data/cow"
image="    path: $data/golden.img
    storage: $storage"
if [[ $storage == rbd ]]; then
    dpkg-query -W -f='${Status}' tgt-rbd 2>/dev/null | grep -q "install ok installed" || apt-get install -y -qq --no-install-recommends tgt-rbd >&2
    scripts/ceph/cluster.sh start "$work/ceph" --osd-gib 16 --owner-pid $$ >&2
    export CEPH_CONF=$work/ceph/ceph.conf
    rbd import --no-progress "$data/golden.img" rbd/golden
    rbd snap create rbd/golden@base >/dev/null 2>&1
    rbd snap protect rbd/golden@base
    image="    storage: rbd
    rbd: golden@base
ceph:
  conf: $CEPH_CONF"
fi
cat >"$COWCTL_MANIFEST" <<YAML
backend: userspace
images:
  g:
$image
defaults:
  image: g
  cow_dir: $data/cow
  cow_size: $((write_mib * 2 + 16))MiB
  chunk: 32KiB
iscsi:
  iqn_prefix: $prefix
  portals: ["127.0.0.1:$port"]
  acl: open
nbd:
  listen: 127.0.0.1:$nbd
  socket: $work/nbd.sock
pcs:
  - name: pc-{001..$(printf %03d "$max")}
YAML
target/release/cowctl apply >/dev/null
serve_pid=$(cat "$COWCTL_RUN_DIR/serve.pid")

control=$((20000 + RANDOM % 10000))
tgtd -C "$control" -f --iscsi "portal=127.0.0.1:$tport" >"$work/tgt.log" 2>&1 &
tgtd_pid=$!
for _ in $(seq 50); do tgtadm -C "$control" --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq "$max"); do
    tgtadm -C "$control" --lld iscsi --op new --mode target --tid "$i" -T "$prefix:pc-$(printf %03d "$i")"
    if [[ $storage == rbd ]]; then
        # Each PC its own clone, as cowctl makes them (64 KiB objects, one stripe).
        rbd clone --object-size 64K --stripe-unit 64K --stripe-count 1 rbd/golden@base "rbd/tgt-$i"
        tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid "$i" --lun 1 --bstype rbd -b "rbd/tgt-$i" --bsopts "conf=$CEPH_CONF"
    else
        tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid "$i" --lun 1 -b "$data/tgt.img"
    fi
    tgtadm -C "$control" --lld iscsi --op bind --mode target --tid "$i" -I ALL
done

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
declare -A last mbps mem
storm() { # key url_prefix lun n write_mib server_pid
    local key=$1 n=$4 before out client
    rm -f "$work/ready" "$work/go"
    before=$(rss_kib "$6")
    "$work/boot-storm" "$2" 1 "$n" "$3" "$read_mib" "$5" "$work/ready" "$work/go" >"$work/out" &
    client=$!
    while [[ ! -e $work/ready ]]; do
        kill -0 "$client" 2>/dev/null || { wait "$client" || true; echo "bench-boot-storm: $key with $n PCs failed" >&2; exit 1; }
        sleep 0.1
    done
    mem[$key-$n]=$(python3 -c "print(f'{max(0, $(rss_kib "$6") - $before) / 1024 / $n:.2f}')")
    touch "$work/go"
    wait "$client"
    read -r t bytes _ <"$work/out"
    last[$key-$n]=$t
    mbps[$key-$n]=$(python3 -c "print(round($bytes / $t / 1e6))")
    echo "bench-boot-storm: $key, $n PCs: last done after $t s, reads ${mbps[$key-$n]} MB/s, ${mem[$key-$n]} MiB per connected PC" >&2
}
for n in "${ns[@]}"; do
    target/release/cowctl reset --all >/dev/null
    storm cowctl "iscsi://127.0.0.1:$port/$prefix:pc-" 0 "$n" "$write_mib" "$serve_pid"
    target/release/cowctl reset --all >/dev/null
    storm cowctl-reads "iscsi://127.0.0.1:$port/$prefix:pc-" 0 "$n" 0 "$serve_pid"
    storm tgt "iscsi://127.0.0.1:$tport/$prefix:pc-" 1 "$n" 0 "$tgtd_pid"
done

one=${ns[0]}
ratio() { python3 -c "print(f'{$1 / max($2, 1e-9):.2f}×')"; }
cell() { echo "${last[$1-$2]} s, $(python3 -c "print(f'{${mbps[$1-$2]}:,}')") MB/s ($(ratio "${mbps[$1-$2]}" "${mbps[$1-$one]}"))"; }
echo "bench-boot-storm: storage: $storage, on ${BENCH_STORM_FS:-the work folder}"
echo "| PCs booting at once | cowctl: boot ($read_mib MiB read + $write_mib MiB written each) | cowctl: reads only | tgt: reads only | cowctl ÷ tgt, reads | memory per connected PC: cowctl, tgt | last PC's time ÷ (N × one PC's), cowctl boot |"
echo "|---|---|---|---|---|---|---|"
for n in "${ns[@]}"; do
    linear=$(python3 -c "print(f'{${last[cowctl-$n]} / ($n * ${last[cowctl-$one]}):.2f}')")
    echo "| $n | $(cell cowctl "$n") | $(cell cowctl-reads "$n") | $(cell tgt "$n") | $(ratio "${mbps[cowctl-reads-$n]}" "${mbps[tgt-$n]}") | ${mem[cowctl-$n]} MiB, ${mem[tgt-$n]} MiB | $linear |"
done
