# Shared by the iSCSI scripts (sourced): free loopback ports, a one-PC room served by
# cowctl serve's iSCSI target, and tgt serving a plain file, the yardstick.

# free_ports N: N distinct free TCP ports on loopback, held open together while chosen so
# no two are the same (one at a time, the kernel may hand the same port out twice).
free_ports() {
    python3 -c 'import socket, sys
held = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in held: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in held))' "$1"
}
free_port() { free_ports 1; }

# serve_room WORK PREFIX PC COW_SIZE CHUNK: writes $COWCTL_MANIFEST for one open-ACL PC on
# WORK/golden.img and applies it; sets cowctl_url.
serve_room() {
    local work=$1 prefix=$2 pc=$3 size=$4 chunk=$5 port nbd
    read -r port nbd < <(free_ports 2)
    mkdir -p "$work/cow"
    cat >"$COWCTL_MANIFEST" <<YAML
backend: userspace
images:
  g:
    path: $work/golden.img
defaults:
  image: g
  cow_dir: $work/cow
  cow_size: $size
  chunk: $chunk
iscsi:
  iqn_prefix: $prefix
  portals: ["127.0.0.1:$port"]
  acl: open
nbd:
  listen: 127.0.0.1:$nbd
  socket: $work/nbd.sock
pcs:
  - name: $pc
YAML
    target/release/cowctl apply >/dev/null
    cowctl_url=iscsi://127.0.0.1:$port/$prefix:$pc/0
}

# start_tgt FILE IQN LOG: tgtd in the foreground (it ignores SIGTERM there) on a free port
# and its own control port, serving FILE as LUN 1; sets tgtd_pid and tgt_url.
start_tgt() {
    local file=$1 iqn=$2 log=$3 port control
    port=$(free_port)
    control=$((20000 + RANDOM % 10000))
    tgtd -C "$control" -f --iscsi "portal=127.0.0.1:$port" >"$log" 2>&1 &
    tgtd_pid=$!
    for _ in $(seq 50); do tgtadm -C "$control" --lld iscsi --op show --mode target >/dev/null 2>&1 && break; sleep 0.1; done
    tgtadm -C "$control" --lld iscsi --op new --mode target --tid 1 -T "$iqn"
    tgtadm -C "$control" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 -b "$file"
    tgtadm -C "$control" --lld iscsi --op bind --mode target --tid 1 -I ALL
    tgt_url=iscsi://127.0.0.1:$port/$iqn/1
}

stop_tgt() {
    if [[ -n ${tgtd_pid:-} ]]; then { kill -9 "$tgtd_pid"; wait "$tgtd_pid"; } 2>/dev/null || true; fi
}
