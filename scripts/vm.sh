#!/usr/bin/env bash
# Real-kernel test VM: Debian's stock kernel under qemu (TCG), booting into the host's own
# root file system (shared read-only over 9p, with a tmpfs overlay on top), so every binary
# built or installed on the host runs in the guest at the same path.
#
#   scripts/vm.sh prepare            install what is needed, cache the kernel and initramfs
#   scripts/vm.sh prepare-kernel     cache Debian's kernel only; print its directory
#   scripts/vm.sh run CMD [ARG...]   boot, run CMD as root in the guest (cwd = this repo),
#                                    print the guest log, exit with CMD's status
#                                    (124: timed out; 125: the guest kernel oopsed)
#
# Environment: COWCTL_VM_CACHE (default: <repo>/vm-cache), COWCTL_VM_TIMEOUT (seconds, 1500),
# COWCTL_VM_MEM (MiB, 2048), COWCTL_VM_LOG (guest log file; default: in the results dir),
# COWCTL_VM_SCRATCH_GB (a sparse scratch disk of that size as /dev/vda, removed afterwards),
# COWCTL_VM_NET=1 (qemu's user network: the guest is 10.0.2.15 and reaches this host's
# loopback services at 10.0.2.2), COWCTL_VM_FWD ("PORT ..." of this host's loopback forwarded
# to the same ports in the guest, with COWCTL_VM_NET), COWCTL_VM_RESULTS (the results
# directory, made by the caller, which can then talk to the guest through its files),
# COWCTL_VM_TAP (a tap device of this host, made and addressed by the caller: the guest's
# eth0 on it, with the address COWCTL_VM_TAP_ADDR, e.g. 10.97.0.2/24; not with COWCTL_VM_NET).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${COWCTL_VM_CACHE:-$repo/vm-cache}
source "$repo/scripts/lib/modules.sh"
# Newest linux-image-<version>-amd64 that linux-image-amd64 depends on.
kernel_package() {
    apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

# Debian's kernel, unpacked with its modules under the cache; prints its directory.
prepare_kernel() {
    local pkg kver
    pkg=$(kernel_package)
    [[ -n $pkg ]] || { apt-get update -qq >&2; pkg=$(kernel_package); }
    [[ -n $pkg ]] || { echo "vm: cannot find the linux-image-amd64 package" >&2; exit 1; }
    kver=${pkg#linux-image-}
    local kdir=$cache/$kver
    if [[ ! -f $kdir/ready ]]; then
        echo "vm: fetching kernel $kver" >&2
        rm -rf "$kdir"
        mkdir -p "$kdir"
        (cd "$kdir" && apt-get download -q "$pkg" >&2 2>/dev/null && dpkg-deb -x ./*.deb root && rm -f ./*.deb)
        depmod -b "$kdir/root" "$kver"
        touch "$kdir/ready"
    fi
    echo "$kdir"
}

prepare() {
    "$repo/scripts/provision.sh" --tests
    local kdir kver
    kdir=$(prepare_kernel)
    kver=$(basename "$kdir")
    local initrd=$kdir/initrd-$(sha256sum "$repo/scripts/vm/initramfs-init" | cut -c1-12).cpio.gz
    if [[ ! -f $initrd ]]; then
        build_initrd "$kdir/root" "$kver" "$initrd"
    fi
    ln -sfn "$kver" "$cache/current"
    ln -sfn "$(basename "$initrd")" "$kdir/initrd.cpio.gz"
    echo "$kdir"
}

build_initrd() {
    local root=$1 kver=$2 out=$3 stage
    stage=$(mktemp -d)
    mkdir -p "$stage"/{bin,dev,proc,sys,lower,upper,newroot,mods}
    cp /bin/busybox "$stage/bin/busybox"
    # Modules for virtio + 9p + overlay, each after the modules it depends on.
    copy_modules "$root" "$kver" "$stage" virtio_pci 9pnet_virtio 9p overlay
    install -m 0755 "$repo/scripts/vm/initramfs-init" "$stage/init"
    (cd "$stage" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
    rm -rf "$stage"
}

run() {
    (($#)) || { echo "usage: scripts/vm.sh run CMD [ARG...]" >&2; exit 2; }
    local kdir results rc oops
    kdir=$(prepare)
    local kver
    kver=$(basename "$kdir")
    results=${COWCTL_VM_RESULTS:-$(mktemp -d /tmp/cowctl-vm.XXXXXX)}
    {
        printf 'COWCTL_REPO=%q\n' "$repo"
        printf 'COWCTL_KVER=%q\n' "$kver"
        printf 'COWCTL_MODULES=%q\n' "$kdir/root/lib/modules/$kver"
        printf 'COWCTL_CMD=('; printf '%q ' "$@"; printf ')\n'
        env | grep -E '^(COWCTL_TEST_|COWCTL_VM_NET|COWCTL_VM_TAP_ADDR|RUST_BACKTRACE|RUST_LOG)' | sed 's/^/export /' || true
    } >"$results/job"
    local log=${COWCTL_VM_LOG:-$results/console.log}
    local scratch=()
    if [[ -n ${COWCTL_VM_SCRATCH_GB:-} ]]; then
        truncate -s "${COWCTL_VM_SCRATCH_GB}G" "$results/scratch.img"
        scratch=(-drive "file=$results/scratch.img,format=raw,if=virtio,cache=unsafe")
    fi
    local net=()
    # COWCTL_VM_FWD: ports of this host's loopback forwarded to the same port in the VM.
    local fwd=""
    for p in ${COWCTL_VM_FWD:-}; do fwd+=",hostfwd=tcp:127.0.0.1:$p-:$p"; done
    [[ -n ${COWCTL_VM_NET:-} ]] && net=(-netdev "user,id=n0$fwd" -device virtio-net-pci,netdev=n0)
    [[ -n ${COWCTL_VM_TAP:-} ]] &&
        net=(-netdev "tap,id=n0,ifname=$COWCTL_VM_TAP,script=no,downscript=no" -device virtio-net-pci,netdev=n0)
    set +e
    timeout --foreground "${COWCTL_VM_TIMEOUT:-1500}" qemu-system-x86_64 \
        -accel tcg,thread=multi -cpu max -smp 2 -m "${COWCTL_VM_MEM:-2048}" \
        -nographic -no-reboot -nodefaults -serial stdio \
        -kernel "$kdir/root/boot/vmlinuz-$kver" -initrd "$kdir/initrd.cpio.gz" \
        -append "console=ttyS0 oops=panic panic=-1 quiet loglevel=1 cowctl.repo=$repo" \
        -device virtio-rng-pci "${scratch[@]}" "${net[@]}" \
        -virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
        -virtfs "local,path=$results,mount_tag=results,security_model=none,multidevs=remap" \
        </dev/null 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    rm -f "$results/scratch.img"
    if [[ -f $results/exit-code ]]; then
        rc=$(cat "$results/exit-code")
    elif oops=$(grep -m1 -aoE '(BUG: |Oops: |general protection fault|Kernel panic).*' "$log"); then
        # oops=panic: an oops powers the guest off at once instead of hanging to the timeout.
        local where
        where=$(grep -m1 -aoE 'RIP: 0010:[^ ]+' "$log" || true)
        where=${where#RIP: 0010:}
        echo "vm: the guest kernel oopsed: $oops${where:+ in $where}" >&2
        rc=125
    elif ((rc == 124)); then
        echo "vm: timed out after ${COWCTL_VM_TIMEOUT:-1500} s" >&2
        rc=124
    else
        echo "vm: the guest stopped without reporting a result (qemu exit $rc)" >&2
        rc=1
    fi
    echo "vm: guest command exited $rc; results in $results" >&2
    return "$rc"
}

case ${1:-} in
    prepare) prepare >/dev/null ;;
    prepare-kernel) prepare_kernel ;;
    run) shift; run "$@" ;;
    *) echo "usage: scripts/vm.sh prepare | prepare-kernel | run CMD [ARG...]" >&2; exit 2 ;;
esac
