#!/usr/bin/env bash
# libiscsi's conformance suite (iscsi-test-cu, families SCSI and iSCSI, data-loss tests on)
# against cowctl serve's userspace iSCSI target and, in the same run, against tgt serving
# a plain file of the same size: the yardstick. Fails unless cowctl passes at least as
# many tests of each family as tgt. Logs go to test-outputs/iscsi-conformance/.
#   scripts/test-iscsi-conformance.sh          (root; scripts/provision.sh --tests first)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
cargo build --release --quiet --bins
out=$repo/test-outputs/iscsi-conformance
rm -rf "$out"
mkdir -p "$out"
work=$(mktemp -d /tmp/cowctl-conformance.XXXXXX)
source scripts/lib/iscsi.sh
export COWCTL_RUN_DIR=$work/run COWCTL_MANIFEST=$work/room.yaml
cleanup() {
    target/release/cowctl down >/dev/null 2>&1 || true
    stop_tgt
    rm -rf "$work"
}
trap cleanup EXIT

# The same 256 MiB disk for both: a golden image under a COW for cowctl, a plain file for tgt.
truncate -s 256M "$work/golden.img" "$work/plain.img"
serve_room "$work" iqn.2024-01.lan.conformance scratch 1GiB 32KiB
cow_url=$cowctl_url
start_tgt "$work/plain.img" iqn.2024-01.lan.conformance:tgt "$out/tgtd.log"

# "tests  Total  Ran  Passed  Failed  Inactive" from CUnit's run summary.
run_suite() { # name family url
    local log=$out/$1-$2.log
    timeout 1200 iscsi-test-cu -d -v --test="$2" "$3" >"$log" 2>&1 || true
    local line
    line=$(grep -aE '^ +tests ' "$log" | tail -1)
    [[ -n $line ]] || { echo "conformance: $1 $2 printed no run summary (see $log)" >&2; tail -5 "$log" >&2; exit 1; }
    read -r _ total ran passed failed _ <<<"$line"
    echo "$total $ran $passed $failed"
}
# The tests CUnit marked FAILED (its verdict ends each test's output), as Suite.Test.
failures() {
    python3 - "$out/$1-$2.log" <<'PY'
import re, sys
suite = test = None
failed = []
for line in open(sys.argv[1], errors="replace"):
    line = line.rstrip("\n")
    if m := re.match(r"Suite: (\S+)", line):
        suite = m.group(1)
    if m := re.match(r"\s+Test: (\S+) \.\.\.", line):
        test = m.group(1)
    verdict = re.search(r"(?:\.\.\.|^)(passed|FAILED)$", line)
    if test and verdict:
        if verdict.group(1) == "FAILED":
            failed.append(f"{suite}.{test}")
        test = None
print(" ".join(failed))
PY
}

declare -A result
for family in SCSI iSCSI; do
    for side in cowctl tgt; do
        url=$cow_url
        [[ $side == tgt ]] && url=$tgt_url
        result[$side-$family]=$(run_suite "$side" "$family" "$url")
    done
done

status=0
printf '\n| family | cowctl passed / ran | tgt passed / ran | cowctl ÷ tgt |\n|---|---|---|---|\n'
for family in SCSI iSCSI; do
    read -r _ cran cpass _ <<<"${result[cowctl-$family]}"
    read -r _ tran tpass _ <<<"${result[tgt-$family]}"
    printf '| %s | %s / %s | %s / %s | %s |\n' "$family" "$cpass" "$cran" "$tpass" "$tran" \
        "$(python3 -c "print(f'{$cpass / max($tpass, 1):.2f}×')")"
    ((cpass >= tpass)) || { echo "conformance: cowctl passes fewer $family tests than tgt" >&2; status=1; }
    ((cran > 0)) || status=1
done
for family in SCSI iSCSI; do
    for side in cowctl tgt; do
        f=$(failures "$side" "$family")
        echo "conformance: $side $family failures: ${f:-none}"
    done
done
echo "conformance: logs in $out"
exit $status
