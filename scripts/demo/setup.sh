# Shared by the demo scripts: the demo's golden image and CHAP secret, made once.
demo=/var/lib/cowctl-demo
mkdir -p "$demo/cow"
# 64 MiB of 'G', whose first sector boots: it counts its boots in sector 1 (the demo's PC).
if [[ ! -e $demo/golden.img ]]; then
    nasm -f bin "$repo/tests/data/counter-boot.asm" -o "$demo/counter-boot.bin"
    { cat "$demo/counter-boot.bin"; head -c 512 /dev/zero; head -c $(((64 << 20) - 1024)) /dev/zero | tr '\0' 'G'; } >"$demo/golden.img.new"
    mv "$demo/golden.img.new" "$demo/golden.img"
fi
[[ -e $demo/chap.secret ]] || (umask 077 && echo "demo-secret-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" >"$demo/chap.secret")
[[ -e $demo/admin.token ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$demo/admin.token")
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
