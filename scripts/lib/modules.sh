# Shared by scripts/vm.sh and scripts/real-os/build.sh (sourced): kernel modules for an
# initramfs, each with the modules it depends on.

# copy_modules ROOT KVER STAGE MODULE...: copies each MODULE of the kernel KVER unpacked under
# ROOT into STAGE/mods, after the modules it depends on (modules.dep), and writes the order to
# load them in to STAGE/mods/order. A module missing from modules.dep is built into the kernel.
copy_modules() {
    local root=$1 kver=$2 stage=$3 m path
    shift 3
    local dep=$root/lib/modules/$kver/modules.dep
    local -A seen=()
    add_module() {
        local path=$1 d
        [[ -n ${seen[$path]:-} ]] && return
        seen[$path]=1
        for d in $(awk -F': ' -v m="$path" '$1 == m { print $2 }' "$dep"); do add_module "$d"; done
        cp "$root/lib/modules/$kver/$path" "$stage/mods/"
        basename "$path" >>"$stage/mods/order"
    }
    mkdir -p "$stage/mods"
    : >"$stage/mods/order"
    for m in "$@"; do
        path=$(awk -F: -v m="$m" '{ n = $1; sub(/.*\//, "", n); sub(/\.ko.*/, "", n) } n == m { print $1; exit }' "$dep")
        [[ -n $path ]] && add_module "$path"
    done
    return 0
}
