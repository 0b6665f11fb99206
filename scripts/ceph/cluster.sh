#!/usr/bin/env bash
# Starts and stops a small real Ceph cluster for tests (Debian 12's ceph-mon, ceph-mgr,
# ceph-osd, ceph-common; no systemd, no root disks): one mon, one mgr and N bluestore OSDs on
# 4 GiB sparse files, all on 127.0.0.1 (or --addr) with cephx, everything (data, logs, sockets, pid files)
# under one directory DIR, pool `rbd` (size 1, 8 PGs) ready for `rbd` and librbd.
#
#   scripts/ceph/cluster.sh start DIR [--osds N] [--osd-gib G] [--owner-pid PID] [--port PORT]
#                                     [--addr IPV4]
#   scripts/ceph/cluster.sh stop DIR
#
# `start` returns once every PG is active+clean (about 5 s; gives up after 90 s, printing the
# daemons' log tails) and prints `ceph-cluster: ready in X.Y s (conf DIR/ceph.conf)`. Clients
# use CEPH_CONF=DIR/ceph.conf (or rados_conf_read_file) as client.admin; the conf names the
# keyring DIR/ceph.client.admin.keyring. A test binary starts one cluster for all its tests
# with --owner-pid <its own pid>: a detached guardian then waits for that process to go away,
# stops the cluster as `stop` does and removes DIR, so no daemon outlives the tests (it starts
# before the daemons do, so an owner killed while `start` runs is covered too). `stop` (0.3 s)
# stops the daemons by the pids in their pid files (other clusters may run alongside), kills
# the guardian and leaves DIR. Never remove DIR without `stop`: the daemons would keep running.
# --addr: the one address of this host every daemon binds to (default 127.0.0.1), e.g. a tap
# device's, so that a VM on that tap reaches the monitor and the OSDs too.
set -euo pipefail

script=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
usage() { echo "usage: $0 start DIR [--osds N] [--osd-gib G] [--owner-pid PID] [--port PORT] [--addr IPV4] | stop DIR" >&2; exit 2; }
say() { echo "ceph-cluster: $*" >&2; }
[[ $# -ge 2 ]] || usage
cmd=$1 D=$(realpath -m "$2")
shift 2

# alive PID: the process exists and is not a zombie.
alive() {
    [[ -r /proc/$1/stat ]] || return 1
    local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [[ -n $st && $st != Z ]]
}

# ours PIDFILE: the pid in it if that process is alive and was started with our conf.
ours() {
    local pid; pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] && alive "$pid" &&
        [[ "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) " == *"$D"[/\ ]* ]] && echo "$pid"
}

# stop_pids GROUP...: SIGTERM the daemons of the given pid-file names, wait 10 s, SIGKILL.
stop_pids() {
    local pids=() f p i
    for f in "$@"; do for p in "$D"/run/$f.pid; do p=$(ours "$p") && pids+=("$p"); done; done
    [[ ${#pids[@]} -gt 0 ]] || return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        for p in "${pids[@]}"; do alive "$p" && break; p=; done
        [[ -z $p ]] && return 0
        sleep 0.1
    done
    say "SIGKILL to ${pids[*]} (did not stop in 10 s)"
    kill -KILL "${pids[@]}" 2>/dev/null || true
}

stop_cluster() {
    local g
    if g=$(ours "$D/run/guardian.pid"); then kill -TERM -- "-$g" 2>/dev/null || true; fi
    rm -f "$D/run/guardian.pid"
    stop_pids 'osd.*' 'mgr.*' # first, so that OSDs can still tell the mon they go down
    stop_pids 'mon.*'
}

case $cmd in
stop) [[ $# -eq 0 ]] || usage; stop_cluster; exit 0 ;;
start) ;;
*) usage ;;
esac

osds=1 owner= port= gib=4 addr=127.0.0.1
while [[ $# -gt 0 ]]; do
    case $1 in
    --osds) osds=$2 ;;
    --osd-gib) gib=$2 ;;
    --owner-pid) owner=$2 ;;
    --port) port=$2 ;;
    --addr) addr=$2 ;;
    *) usage ;;
    esac
    shift 2 || usage
done
[[ $osds =~ ^[1-9][0-9]*$ && $gib =~ ^[1-9][0-9]*$ && $port =~ ^[0-9]*$ &&
    $addr =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || usage
[[ -z $owner ]] || alive "$owner" || { say "owner pid $owner is not running"; exit 1; }
if [[ -e $D && -n $(ls -A "$D") ]]; then say "$D is not empty"; exit 1; fi
listening() { [[ -n $(ss -ltnH "sport = :$1") ]]; }
if [[ -z $port ]]; then
    for _ in {1..50}; do port=$((3300 + RANDOM % 3000)); listening "$port" || break; done
fi
listening "$port" && { say "port $port is in use"; exit 1; }

t0=${EPOCHREALTIME/[.,]/}
deadline=$((t0 / 1000000 + 90))
left() { local l=$((deadline - ${EPOCHREALTIME%[.,]*})); echo $((l > 1 ? l : 1)); }
fail() { say "$*"; exit 1; }
# Any failure (set -e or fail): report, print the daemons' log tails, stop what runs.
on_exit() {
    [[ $1 == 0 ]] && return
    say "start failed${where:+ at $where}"
    for f in "$D"/log/*.log; do
        [[ $f == */audit.log ]] && continue
        if [[ -e $f ]]; then echo "==> $f <==" >&2; tail -n 25 "$f" >&2; fi
    done
    stop_cluster
}
trap 'where="line $LINENO: $BASH_COMMAND"' ERR
trap 'on_exit $?' EXIT
c() { timeout "$(left)" ceph -c "$D/ceph.conf" "$@"; }

mkdir -p "$D/run" "$D/log" "$D/mon.a" "$D/mgr.x"
if [[ -n $owner ]]; then
    setsid bash -c 'while sed "s/.*) //" /proc/$1/stat 2>/dev/null | grep -qv "^Z"; do sleep 1; done
        rm -f "$2/run/guardian.pid"; "$3" stop "$2"; rm -rf "$2"' \
        guardian "$owner" "$D" "$script" </dev/null >/dev/null 2>&1 &
    echo $! >"$D/run/guardian.pid" # setsid did not fork (not a group leader): $! leads a group
fi
# Daemons only (clients read [global] too): own keyring, pid file and log file.
daemon="keyring = $D/\$name/keyring
pid file = $D/run/\$name.pid
log file = $D/log/\$name.log"
cat >"$D/ceph.conf" <<EOF
[global]
fsid = $(cat /proc/sys/kernel/random/uuid)
mon host = v2:$addr:$port
public network = $addr/32
ms bind ipv6 = false
auth cluster required = cephx
auth service required = cephx
auth client required = cephx
auth allow insecure global id reclaim = false
run dir = $D/run
admin socket = $D/run/\$name.asok
crash dir = $D/crash
mon cluster log file = $D/log/\$channel.log
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
mgr initial modules = iostat
paxos propose interval = 0.1
mgr stats period = 1
[mon]
$daemon
mon data = $D/\$name
[mgr]
$daemon
mgr data = $D/\$name
[osd]
$daemon
osd data = $D/\$name
osd objectstore = bluestore
bluestore block create = true
# Sparse: what is written takes room. A full OSD (95 %) blocks every write.
bluestore block size = $((gib << 30))
bluestore fsck on mkfs = false
osd memory target = 943718400
# A dead client's watch (and so a dead gateway's exclusive lock) goes after 5 s, not 30.
osd client watch timeout = 5
bluestore cache autotune = false
bluestore cache size = 134217728
[client]
keyring = $D/ceph.client.admin.keyring
admin socket = $D/run/\$name.\$pid.asok
EOF

# Keys of mon., client.admin and mgr.x go into the mon's auth database at mkfs.
kt() { ceph-authtool "$@" >/dev/null; }
kt --create-keyring "$D/ceph.client.admin.keyring" --gen-key -n client.admin \
    --cap mon 'allow *' --cap osd 'allow *' --cap mgr 'allow *' --cap mds 'allow *'
kt --create-keyring "$D/mgr.x/keyring" --gen-key -n mgr.x \
    --cap mon 'allow profile mgr' --cap osd 'allow *' --cap mds 'allow *'
kt --create-keyring "$D/mon.keyring" --gen-key -n mon. --cap mon 'allow *'
kt "$D/mon.keyring" --import-keyring "$D/ceph.client.admin.keyring"
kt "$D/mon.keyring" --import-keyring "$D/mgr.x/keyring"
monmaptool --create --fsid "$(sed -n 's/^fsid = //p' "$D/ceph.conf")" \
    --addv a "[v2:$addr:$port]" "$D/monmap" >/dev/null
ceph-mon -c "$D/ceph.conf" -i a --mkfs --monmap "$D/monmap" --keyring "$D/mon.keyring"
ceph-mon -c "$D/ceph.conf" -i a
ceph-mgr -c "$D/ceph.conf" -i x

# OSDs: register each with its key, then mkfs and start them in parallel.
mkosd() {
    local id=$1 uuid=$2
    ceph-osd -c "$D/ceph.conf" -i "$id" --mkfs --osd-uuid "$uuid" >"$D/log/osd.$id.mkfs.log" 2>&1 &&
        ceph-osd -c "$D/ceph.conf" -i "$id" >>"$D/log/osd.$id.mkfs.log" 2>&1
}
starts=()
for ((n = 0; n < osds; n++)); do
    uuid=$(cat /proc/sys/kernel/random/uuid) key=$(ceph-authtool --gen-print-key)
    id=$(echo "{\"cephx_secret\": \"$key\"}" | c osd new "$uuid" -i -)
    mkdir -p "$D/osd.$id"
    kt --create-keyring "$D/osd.$id/keyring" -n "osd.$id" --add-key "$key"
    mkosd "$id" "$uuid" &
    starts+=($!)
done
for j in "${starts[@]}"; do wait "$j" || fail "an OSD failed to start"; done

c osd pool create rbd 8 >>"$D/log/setup.log" 2>&1
timeout "$(left)" rbd -c "$D/ceph.conf" pool init rbd

# Ready: mgr available, all OSDs up and in, every PG active+clean, health OK or warnings
# that do not matter for tests only.
num() { grep -o "\"$1\":[0-9]*" <<<"$s" | head -1 | cut -d: -f2 || true; }
trivia='MON_DISK_LOW|POOL_NO_REDUNDANCY|TELEMETRY_CHANGED'
while :; do
    s=$(c -s -f json 2>/dev/null) || s=
    clean=$(grep -o '"state_name":"active+clean","count":[0-9]*' <<<"$s" | cut -d: -f3) || true
    checks=$(grep -o '"[A-Z_]*":{"severity"' <<<"$s" | cut -d'"' -f2 | grep -Evx "$trivia") || true
    if grep -q '"available":true' <<<"$s" && [[ $(num num_up_osds) == "$osds" &&
        $(num num_in_osds) == "$osds" && -n $clean && $(num num_pgs) == "$clean" && -z $checks ]]; then
        break
    fi
    ((${EPOCHREALTIME%[.,]*} < deadline)) || fail "not ready in 90 s: $(c health detail 2>&1)"
    sleep 0.5
done
trap - ERR EXIT
rm -f "$D/mon.keyring" "$D/monmap"
el=$((${EPOCHREALTIME/[.,]/} - t0))
echo "ceph-cluster: ready in $((el / 1000000)).$((el / 100000 % 10)) s (conf $D/ceph.conf)"
