#!/usr/bin/env bash
# How long a room of N PCs is without its userspace target when `cowctl serve` is killed
# (SIGKILL) and `cowctl apply` starts it again: from the kill until every PC's iSCSI target
# answers a login again (iscsi-inq, one per PC, in parallel), for N = 1, 10, 50. This is the
# floor of what a PC's initiator sees; a real OS adds its own reconnect delay on top
# (tests/qemu_real_os.rs measures one booted Linux: its longest wait for a sync).
# Then the planned restart (SIGHUP, `systemctl reload`: the binary on disk takes every socket
# and session over): N initiators (scripts/bench/hold.c, libiscsi with its own reconnect off)
# write 4 KiB, SYNCHRONIZE CACHE and read it back in a loop for BENCH_HOLD_SECONDS, once
# without a restart and once with one in the middle; the table gives the longest round any
# initiator saw in each run (the pause the restart costs is the difference), the commands
# that failed and the read-backs that differed (both must be 0), and serve's own account:
# how long the sessions took to stand still, and when the new binary had taken them over.
#   scripts/bench-restart.sh       (BENCH_RESTART_NS="1 10 50", BENCH_RESTART_ROUNDS=3,
#                                   BENCH_HOLD_SECONDS=8)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
scripts/provision.sh --tests
cargo build --release --quiet --bins
source scripts/lib/iscsi.sh
read -r -a ns <<<"${BENCH_RESTART_NS:-1 10 50}"
rounds=${BENCH_RESTART_ROUNDS:-3}
work=$(mktemp -d /var/tmp/cowctl-bench-restart.XXXXXX)
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
trap 'target/release/cowctl down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
truncate -s 1G "$work/golden.img"
gcc -O2 -Wall -pthread -o "$work/hold" scripts/bench/hold.c -liscsi
hold_seconds=${BENCH_HOLD_SECONDS:-8}
prefix=iqn.2024-01.lan.bench-restart
ms() { echo $(($(date +%s%N) / 1000000)); }
# serve_pcs N: a fresh service on free ports serving pc-001..pc-N (open ACL); sets port.
serve_pcs() {
    target/release/cowctl down >/dev/null 2>&1 || true
    read -r port nbd < <(free_ports 2)
    mkdir -p "$work/cow"
    {
        printf 'backend: userspace\nimages:\n  g:\n    path: %s/golden.img\n' "$work"
        printf 'defaults:\n  image: g\n  cow_dir: %s/cow\n  cow_size: 1GiB\n  chunk: 4KiB\n' "$work"
        printf 'iscsi:\n  iqn_prefix: %s\n  portals: ["127.0.0.1:%s"]\n  acl: open\n' "$prefix" "$port"
        printf 'nbd:\n  listen: 127.0.0.1:%s\n  socket: %s/nbd.sock\npcs:\n' "$nbd" "$work"
        for i in $(seq "$1"); do printf '  - name: pc-%03d\n' "$i"; done
    } >"$COWCTL_MANIFEST"
    target/release/cowctl apply >/dev/null
}
echo "| PCs | kill → apply returns | kill → every PC's target answers |"
echo "|---|---|---|"
for n in "${ns[@]}"; do
    serve_pcs "$n"
    applied=() answered=()
    for _ in $(seq "$rounds"); do
        start=$(ms)
        pid=$(cat "$work/run/serve.pid")
        kill -9 "$pid"
        # Gone, or a zombie (its sockets are closed; when init reaps it is not cowctl's time).
        while [[ -e /proc/$pid ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$pid/status" 2>/dev/null; do sleep 0.005; done
        target/release/cowctl apply >/dev/null
        applied+=($(($(ms) - start)))
        pids=()
        for i in $(seq "$n"); do
            (until iscsi-inq "iscsi://127.0.0.1:$port/$prefix:$(printf pc-%03d "$i")/0" >/dev/null 2>&1; do sleep 0.01; done) &
            pids+=($!)
        done
        wait "${pids[@]}"
        answered+=($(($(ms) - start)))
    done
    median() { printf '%s\n' "$@" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
    printf '| %s | %s ms | %s ms |\n' "$n" "$(median "${applied[@]}")" "$(median "${answered[@]}")"
done

# hold_run N SIGNAL: hold for N PCs on a fresh COW each; with SIGNAL, a SIGHUP half way.
# Prints hold's line: rounds errors mismatches longest_ms.
hold_run() {
    local n=$1 signal=$2 pid h
    target/release/cowctl reset --all >/dev/null
    rm -f "$work/ready"
    "$work/hold" "iscsi://127.0.0.1:$port/$prefix:pc-" 1 "$n" 0 "$hold_seconds" "$work/ready" >"$work/hold.out" 2>"$work/hold.err" &
    h=$!
    until [[ -e $work/ready ]] || ! kill -0 "$h" 2>/dev/null; do sleep 0.01; done
    if [[ -n $signal ]]; then
        sleep "$((hold_seconds / 2))"
        pid=$(cat "$work/run/serve.pid")
        kill -HUP "$pid"
    fi
    wait "$h" || true
    [[ -s $work/hold.err ]] && sed 's/^/    /' "$work/hold.err" >&2
    cat "$work/hold.out"
}
echo
echo "Planned restart (SIGHUP) under N initiators writing, syncing and reading back (${hold_seconds} s each):"
echo "| PCs | longest round, no restart | longest round, restart | failed commands | wrong read-backs | sessions stood still | taken over after |"
echo "|---|---|---|---|---|---|---|"
for n in "${ns[@]}"; do
    serve_pcs "$n"
    read -r _ e0 m0 base < <(hold_run "$n" "")
    read -r _ e1 m1 across < <(hold_run "$n" HUP)
    still=$(grep -o 'stood still in [0-9.]* ms' "$work/run/serve.log" | tail -1 | grep -o '[0-9.]* ms')
    taken=$(grep -o 'took over [0-9]* iSCSI sessions and [0-9]* NBD connections, [0-9]* ms' "$work/run/serve.log" | tail -1 | grep -o '[0-9]* ms$')
    printf '| %s | %s ms | %s ms | %s | %s | %s | %s |\n' "$n" "$base" "$across" "$((e0 + e1))" "$((m0 + m1))" "$still" "$taken"
done
