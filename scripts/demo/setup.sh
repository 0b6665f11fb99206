# Shared by the demo scripts: the demo's golden image and CHAP secret, made once.
demo=/var/lib/cowctl-demo
mkdir -p "$demo/cow"
[[ -e $demo/golden.img ]] || head -c $((64 << 20)) /dev/zero | tr '\0' 'G' >"$demo/golden.img"
[[ -e $demo/chap.secret ]] || (umask 077 && echo "demo-secret-$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')" >"$demo/chap.secret")
[[ -e $demo/admin.token ]] || (umask 077 && od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$demo/admin.token")
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }
