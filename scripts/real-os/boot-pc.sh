#!/usr/bin/env bash
# Boots a PC with the real OS of scripts/real-os/build.sh on its SAN disk and waits for the OS's
# report. The PC is qemu on its user network (this machine is 10.0.2.2 there), its e1000's
# iPXE ROM (BIOS) or EFI driver under OVMF (UEFI) runs the iPXE script SCRIPT_FILE (by TFTP).
#   scripts/real-os/boot-pc.sh bios|uefi SCRIPT_FILE [JOB] [SECONDS] [LOG]
# JOB is what the OS does (boot, write=SECONDS: scripts/real-os/os-init). Prints the OS's
# line ("cowctl-os boot=N checked=K bad=B") and the seconds from power-on to its report;
# exits 1, printing the end of the serial log, when it did not report, saw an I/O error or
# found a bad file.
set -euo pipefail
firmware=$1 script=$2 job=${3:-boot} limit=${4:-300}
dir=$(mktemp -d /tmp/cowctl-os-pc.XXXXXX)
trap 'rm -rf "$dir"' EXIT
log=${5:-$dir/serial.log}
mkdir "$dir/tftp"
cp "$script" "$dir/tftp/boot.ipxe"
fw=()
if [[ $firmware == uefi ]]; then
    cp /usr/share/OVMF/OVMF_VARS_4M.fd "$dir/vars.fd"
    fw=(-drive if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd
        -drive "if=pflash,format=raw,file=$dir/vars.fd")
fi
start=$(date +%s%N)
qemu-system-x86_64 -accel tcg -m 512 -display none -no-reboot -nodefaults -boot n "${fw[@]}" \
    -serial "file:$log" -fw_cfg "name=opt/cowctl/job,string=$job" \
    -netdev "user,id=n0,tftp=$dir/tftp,bootfile=boot.ipxe" -device e1000,netdev=n0 \
    </dev/null >/dev/null 2>&1 &
qemu=$!
end=$((SECONDS + limit))
while ((SECONDS < end)) && kill -0 "$qemu" 2>/dev/null; do
    grep -qa "cowctl-os powering off" "$log" 2>/dev/null && break
    sleep 0.25
done
took_ms=$((($(date +%s%N) - start) / 1000000))
sleep 1
kill "$qemu" 2>/dev/null || true
wait "$qemu" 2>/dev/null || true
line=$(tr -d '\r' <"$log" | grep -a -m1 '^cowctl-os boot=' || true)
errors=$(tr -d '\r' <"$log" | grep -a -e 'I/O error' -e 'cowctl-os write failed' -e 'cowctl-os bad file' \
    -e 'EXT4-fs error' -e 'session recovery timed out' || true)
if [[ -z $line ]] || ! grep -qa "cowctl-os powering off" "$log" || [[ -n $errors ]]; then
    echo "boot-pc: the $firmware PC's OS did not report cleanly within $limit s:" >&2
    tr -d '\r' <"$log" | sed 's/\x1b\[[0-9;?]*[a-zA-Z]//g' | grep -av '^\[' | tail -n 20 >&2
    [[ -z $errors ]] || echo "$errors" >&2
    exit 1
fi
printf '%s took=%d.%d\n' "$line" $((took_ms / 1000)) $((took_ms % 1000 / 100))
