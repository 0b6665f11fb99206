# Sourced by the scripts that run a VM test with a host half (scripts/test-vm-*.sh).
# vm_test_binary NAME: the VM and the binaries ready, then the path of tests/NAME.rs's test
# binary (built if need be); fails, naming the caller, when it was not built.
vm_test_binary() {
    local name=$1 bin
    scripts/vm.sh prepare
    cargo build --release --quiet --bins
    bin=$(cargo test --release --no-run --message-format=json --test "$name" 2>/dev/null |
        python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["test"]:
        print(m["executable"])')
    [[ -n $bin ]] || { echo "$(basename "$0" .sh): the test binary of tests/$name.rs was not built" >&2; return 1; }
    echo "$bin"
}
