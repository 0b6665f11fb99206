#!/usr/bin/env bash
# storage: rbd against the classic ways to serve RBD, in one run on one cluster (started
# here: scripts/ceph/cluster.sh, one OSD on a sparse file): cowctl serve's iSCSI target
# against tgt with its rbd backing store (Debian tgt-rbd), and cowctl's NBD server against
# qemu-nbd over rbd:, each on a fresh clone of the same 1 GiB image of random data (64 KiB
# objects, as cowctl makes them). Jobs: 4 KiB random writes at queue depth 16 into the fresh
# clone (first writes: each copies an object up from the image), the same again (rewrites),
# 4 KiB random reads at depth 16, 1 MiB sequential reads at depth 4 (iscsi-bench over iSCSI,
# fio's nbd engine over NBD), and librbd alone (rbd bench at the same depths) as what the
# machine and cluster give any gateway. Then a reset's pause in rooms of 1, 10 and 50 PCs, and the
# memory and cluster connections of cowctl serve with 50 PCs. Prints tables with ratios.
#   scripts/bench-rbd.sh        (RUNTIME=10 seconds per job)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
runtime=${RUNTIME:-10}
scripts/provision.sh --tests >/dev/null
for p in tgt-rbd; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || apt-get install -y -qq --no-install-recommends "$p" >&2; done
cargo build --release --quiet --bins
work=$(mktemp -d /var/tmp/cowctl-bench-rbd.XXXXXX)
gcc -O2 -Wall -o "$work/iscsi-bench" scripts/bench/iscsi-bench.c -liscsi
source scripts/lib/iscsi.sh
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
cleanup() {
    target/release/cowctl down >/dev/null 2>&1 || true
    stop_tgt
    [[ -n ${qnbd_pid:-} ]] && kill "$qnbd_pid" 2>/dev/null
    scripts/ceph/cluster.sh stop "$work/ceph" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# Room for the image and three clones written all over (a full OSD blocks every write).
scripts/ceph/cluster.sh start "$work/ceph" --osd-gib 16 --owner-pid $$ >&2
export CEPH_CONF=$work/ceph/ceph.conf
echo "bench-rbd: a 1 GiB image of random data, snapshot golden@base" >&2
head -c $((1 << 30)) /dev/urandom >"$work/golden.img"
rbd import --no-progress "$work/golden.img" rbd/golden
rm "$work/golden.img"
rbd snap create rbd/golden@base >/dev/null 2>&1
rbd snap protect rbd/golden@base
clone() { rbd clone --object-size 64K --stripe-unit 64K --stripe-count 1 rbd/golden@base "rbd/$1"; }

# room N: a manifest of N iSCSI PCs (and NBD) on rbd, applied.
room() {
    local n=$1 port nbd
    read -r port nbd < <(free_ports 2)
    cat >"$COWCTL_MANIFEST" <<YAML
backend: userspace
images:
  g:
    storage: rbd
    rbd: golden@base
ceph:
  conf: $CEPH_CONF
  pool: rbd
defaults:
  image: g
  cow_size: 2GiB
iscsi:
  iqn_prefix: iqn.2024-01.lan.bench
  portals: ["127.0.0.1:$port"]
  acl: open
nbd:
  listen: 127.0.0.1:$nbd
pcs:
  - name: pc-{1..$n}
    export: iscsi
YAML
    target/release/cowctl apply >/dev/null
    cowctl_url=iscsi://127.0.0.1:$port/iqn.2024-01.lan.bench:pc-1/0
    cowctl_nbd=nbd://127.0.0.1:$nbd/pc-1
}

declare -A iops mbps
iscsi_jobs=("randwrite 4096 16 first" "randwrite 4096 16 rewrite" "randread 4096 16 randread" "seqread 1048576 4 seqread")
run_iscsi() {
    local side=$1 url=$2
    for job in "${iscsi_jobs[@]}"; do
        set -- $job
        # A job that does not end (tgt-rbd once stopped answering mid-run) counts as 0.
        read -r iops[iscsi-$side-$4] mbps[iscsi-$side-$4] < <(timeout -k 10 $((runtime + 60)) "$work/iscsi-bench" "$url" "$1" "$2" "$3" "$runtime" || echo 0 0)
        echo "bench-rbd: iSCSI $side $4: ${iops[iscsi-$side-$4]} IOPS" >&2
    done
}
fio_nbd() {
    local uri=$1 rw=$2 bs=$3 depth=$4
    # qemu-nbd over rbd: once hung a run for minutes; a job that does not end is an error.
    timeout -k 10 $((runtime + 60)) fio --name=j --ioengine=nbd --uri="$uri" --rw="$rw" --bs="$bs" --iodepth="$depth" \
        --size=1G --time_based --runtime="$runtime" --randrepeat=0 --output-format=json \
        >"$work/fio.json" 2>"$work/fio.err" || { cat "$work/fio.err" >&2; return 1; }
    # fio may print a note before its JSON.
    python3 -c 'import json,sys; t=open(sys.argv[1]).read(); j=json.loads(t[t.index("{"):])["jobs"][0]; d=j["write"] if j["write"]["iops"]>0 else j["read"]; print(int(d["iops"]), int(d["bw_bytes"]/1e6))' "$work/fio.json" ||
        { head -c 600 "$work/fio.json" "$work/fio.err" >&2; return 1; }
}
nbd_jobs=("randwrite 4k 16 first" "randwrite 4k 16 rewrite" "randread 4k 16 randread" "read 1m 4 seqread")
run_nbd() {
    local side=$1 uri=$2
    for job in "${nbd_jobs[@]}"; do
        set -- $job
        read -r iops[nbd-$side-$4] mbps[nbd-$side-$4] < <(fio_nbd "$uri" "$1" "$2" "$3" || echo 0 0)
        echo "bench-rbd: NBD $side $4: ${iops[nbd-$side-$4]} IOPS" >&2
    done
}

room 1
run_iscsi cowctl "$cowctl_url"
target/release/cowctl reset pc-1 >/dev/null
run_nbd cowctl "$cowctl_nbd"
target/release/cowctl down >/dev/null
rbd rm --no-progress rbd/cowctl.pc-1 >/dev/null

# tgtd with its rbd backing store on the clone rbd/tgt; tgt_url set.
start_tgt_rbd() {
    local port control
    port=$(free_port)
    control=$((20000 + RANDOM % 10000))
    tgtd -C "$control" -f --iscsi "portal=127.0.0.1:$port" >>"$work/tgtd.log" 2>&1 &
    tgtd_pid=$!
    for _ in $(seq 50); do tgtadm -C "$control" --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
    tgtadm -C "$control" --lld iscsi --op new --mode target --tid 1 -T iqn.2024-01.lan.bench:tgt
    tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 --bstype rbd -b rbd/tgt --bsopts "conf=$CEPH_CONF"
    tgtadm -C "$control" --lld iscsi --op bind --mode target --tid 1 -I ALL
    tgt_url=iscsi://127.0.0.1:$port/iqn.2024-01.lan.bench:tgt/1
}
clone tgt
# A tgtd of its own for each job (one serving all four stopped answering in an early run,
# on an OSD that had filled up; each job logs in anew anyway).
for job in "${iscsi_jobs[@]}"; do
    start_tgt_rbd
    iscsi_jobs_all=("${iscsi_jobs[@]}")
    iscsi_jobs=("$job")
    run_iscsi tgt "$tgt_url"
    iscsi_jobs=("${iscsi_jobs_all[@]}")
    stop_tgt
done

# librbd alone (rbd bench, its own asynchronous I/O, the same depths, cache off as
# cowctl's): what this machine and cluster give any gateway, on a fresh clone of the image
# written as the gateways' were (first writes, rewrites), then read as theirs were: reads of
# objects the clone holds cost the OSD more than reads of the image's few large ones.
rbd_bench() {
    local image=$1 type=$2 pattern=$3 size=$4 threads=$5 total=$6
    rbd bench --io-type "$type" --io-pattern "$pattern" --io-size "$size" --io-threads "$threads" \
        --io-total "$total" --rbd_cache=false "rbd/$image" 2>/dev/null | sed -n 's/^elapsed:.*ops\/sec: *\([0-9]*\).*/\1/p'
}
clone raw
# As many writes as cowctl's clone took in its two write jobs.
writes() { local n=${iops[iscsi-cowctl-$1]:-0}; echo $(((n > 100 ? n : 2000) * runtime * 4))K; }
first=$(writes first) rewrite=$(writes rewrite)
iops[raw-first]=$(rbd_bench raw write rand 4K 16 "$first")
iops[raw-rewrite]=$(rbd_bench raw write rand 4K 16 "$rewrite")
iops[raw-randread]=$(rbd_bench raw read rand 4K 16 400M)
iops[raw-seqread]=$(rbd_bench raw read seq 1M 4 4G)
for j in first rewrite randread seqread; do echo "bench-rbd: librbd alone $j: ${iops[raw-$j]} IOPS" >&2; done
rbd rm --no-progress rbd/raw >/dev/null 2>&1 || true

clone qnbd
qport=$(free_port)
qemu-nbd -f raw --persistent --shared=4 -b 127.0.0.1 -p "$qport" -x pc "rbd:rbd/qnbd:conf=$CEPH_CONF" &
qnbd_pid=$!
for _ in $(seq 50); do nbdinfo "nbd://127.0.0.1:$qport/pc" >/dev/null 2>&1 && break; sleep 0.1; done
run_nbd qemu-nbd "nbd://127.0.0.1:$qport/pc"
kill "$qnbd_pid"; wait "$qnbd_pid" 2>/dev/null || true; qnbd_pid=

# A reset's pause with 1, 10 and 50 PCs served, pc-1 having written 16 MiB.
declare -A pause
for n in 1 10 50; do
    room "$n"
    "$work/iscsi-bench" "$cowctl_url" randwrite 65536 4 1 16 >/dev/null
    out=$(target/release/cowctl reset pc-1)
    pause[$n]=$(sed -n 's/.*I\/O paused \([0-9.]*\) ms.*/\1/p' <<<"$out")
    echo "bench-rbd: $n PCs: reset paused ${pause[$n]} ms" >&2
    if [[ $n == 50 ]]; then
        pid=$(cat "$COWCTL_RUN_DIR/serve.pid")
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
        conns=$(ss -tnp 2>/dev/null | grep -c "pid=$pid," || true)
    fi
    target/release/cowctl down >/dev/null
    for i in $(seq "$n"); do rbd rm --no-progress "rbd/cowctl.pc-$i" >/dev/null 2>&1 || true; done
done

ratio() { python3 -c "print(f'{$1 / max($2, 1):.2f}×')"; }
fmt() { python3 -c "print(f'{int($1):,}')"; }
label() {
    case $1 in first) echo "4 KiB random write qd16, fresh clone (first writes)" ;; rewrite) echo "4 KiB random write qd16, written objects (rewrites)" ;;
        randread) echo "4 KiB random read qd16" ;; seqread) echo "1 MiB sequential read qd4" ;; esac
}
echo
echo "| $runtime s per job, one OSD | cowctl iSCSI | tgt-rbd | cowctl ÷ tgt | cowctl NBD | qemu-nbd | cowctl ÷ qemu-nbd | librbd alone (rbd bench) | cowctl iSCSI ÷ librbd alone |"
echo "|---|---|---|---|---|---|---|---|---|"
for j in first rewrite randread seqread; do
    echo "| $(label $j) | $(fmt "${iops[iscsi-cowctl-$j]}") IOPS, $(fmt "${mbps[iscsi-cowctl-$j]}") MB/s | $(fmt "${iops[iscsi-tgt-$j]}") IOPS | $(ratio "${iops[iscsi-cowctl-$j]}" "${iops[iscsi-tgt-$j]}") | $(fmt "${iops[nbd-cowctl-$j]}") IOPS, $(fmt "${mbps[nbd-cowctl-$j]}") MB/s | $(fmt "${iops[nbd-qemu-nbd-$j]}") IOPS | $(ratio "${iops[nbd-cowctl-$j]}" "${iops[nbd-qemu-nbd-$j]}") | $(fmt "${iops[raw-$j]:-0}") IOPS | $(ratio "${iops[iscsi-cowctl-$j]}" "${iops[raw-$j]:-0}") |"
done
echo
echo "| cowctl serve, storage: rbd | 1 PC | 10 PCs | 50 PCs |"
echo "|---|---|---|---|"
echo "| one reset's pause (pc-1 wrote 16 MiB) | ${pause[1]} ms | ${pause[10]} ms | ${pause[50]} ms |"
echo "| memory (RSS) of cowctl serve | | | $((rss / 1024)) MiB, $((rss / 50)) KiB per PC |"
echo "| TCP connections of cowctl serve (cluster and clients) | | | $conns |"
