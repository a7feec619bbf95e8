#!/usr/bin/env bash
# cross/smoke-aarch64.sh — runs the aarch64 dist binary (under qemu-user on other hosts) and
# proves it starts, sizes itself and serves a real wasi:http component over loopback.
#
# Owns: the end-to-end check of <target-dir>/dist/outpost-aarch64-unknown-linux-musl made by
#       cross/build.sh: `--version`, `info`, and `serve --listen 127.0.0.1:0 hello.wasm` answered
#       with "hello from outpost\n".
# Must not: build anything (run cross/build.sh and any cargo build first), touch the user's
#           compile cache (it uses a temporary one), or kill processes it did not start.
#
# Environment: CARGO_TARGET_DIR and OUTPOST_APPS_TARGET_DIR are honoured like build.rs does;
# OUTPOST_SMOKE_TIMEOUT (seconds, default 300) bounds each step, generous because qemu-user
# runs Cranelift's compile of the component about an order of magnitude slower than native;
# OUTPOST_SMOKE_AS_LIMIT_GIB (default 64, 0 = none) caps the emulated process's address space.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/common.sh
. "$here/common.sh"
cd "$here/.."

target=aarch64-unknown-linux-musl
expected_body='hello from outpost'
timeout_s=${OUTPOST_SMOKE_TIMEOUT:-300}
case $timeout_s in '' | *[!0-9]*) die "OUTPOST_SMOKE_TIMEOUT must be whole seconds, got '$timeout_s'" ;; esac
as_limit_gib=${OUTPOST_SMOKE_AS_LIMIT_GIB:-64}
case $as_limit_gib in '' | *[!0-9]*) die "OUTPOST_SMOKE_AS_LIMIT_GIB must be whole GiB, got '$as_limit_gib'" ;; esac

target_dir=$(cargo_target_dir)
bin="$target_dir/dist/outpost-$target"
apps_dir=${OUTPOST_APPS_TARGET_DIR:-$target_dir/testbed-apps}
hello="$apps_dir/wasm32-wasip2/release/hello.wasm"
[ -x "$bin" ] || die "$bin not found; run cross/build.sh $target first"
[ -f "$hello" ] || die "$hello not found; any cargo build of outpost produces it (build.rs)"

ensure_cmd curl curl
ensure_cmd timeout coreutils
runner=()
if [ "$(uname -m)" != aarch64 ]; then
    # qemu-aarch64-static is what Debian's qemu-user-static ships; newer Debian releases
    # install the same (static) emulator as plain qemu-aarch64.
    if ! command -v qemu-aarch64-static >/dev/null 2>&1 && ! command -v qemu-aarch64 >/dev/null 2>&1; then
        apt_install qemu-user-static
    fi
    qemu=$(command -v qemu-aarch64-static || command -v qemu-aarch64) ||
        die "no qemu-aarch64 emulator found after installing qemu-user-static"
    runner=("$qemu")
else
    # Native: the real address space is what the daemon must size itself for.
    as_limit_gib=0
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-smoke.XXXXXX")
server_pid=
cleanup() {
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # Give the drain a moment, then make sure nothing outlives the script.
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Runs "$@" in the current (sub)shell with the address-space cap applied. Why the cap: qemu-user
# 7.2 (Debian 12) keeps per-page bookkeeping for every guest mapping, so a pooling allocator
# that reserves terabytes of PROT_NONE address space costs tens of GiB of real host memory
# (an uncapped run was OOM-killed at 23.6 GiB RSS). Under the cap the daemon reads RLIMIT_AS,
# sizes a smaller pool and still exercises the pooling allocator. The emulated VA-bits probe
# is not stable under qemu either (39..47 bits seen), which the cap also makes irrelevant.
with_as_limit() {
    if [ "$as_limit_gib" -gt 0 ]; then
        ulimit -v "$((as_limit_gib * 1024 * 1024))" || die "ulimit -v ${as_limit_gib}GiB failed"
    fi
    exec "$@"
}

run() { (with_as_limit timeout "$timeout_s" "${runner[@]}" "$bin" "$@"); }

log "runner: ${runner[*]:-native} $bin (address-space cap: ${as_limit_gib} GiB, 0 = none)"

log "outpost --version"
version=$(run --version) || die "outpost --version failed"
printf '%s\n' "$version"
case $version in outpost\ *) ;; *) die "unexpected --version output: $version" ;; esac

log "outpost info"
run info >"$work/info.txt" 2>"$work/info.err" || {
    cat "$work/info.txt" "$work/info.err" >&2
    die "outpost info failed under ${runner[*]:-native}"
}
cat "$work/info.txt"

log "outpost serve --listen 127.0.0.1:0 $hello"
# Started in the background with its own output files so the bound address can be read
# while it runs; the subshell execs timeout(1), so the PID is timeout's, and timeout forwards
# our TERM to outpost. The files exist before the fork so the poll below never races the open.
: >"$work/serve.out"
: >"$work/serve.err"
(with_as_limit timeout "$((timeout_s * 2))" "${runner[@]}" "$bin" serve --listen 127.0.0.1:0 \
    --cache-dir "$work/cache" "$hello" >"$work/serve.out" 2>"$work/serve.err") &
server_pid=$!

addr=
deadline=$((SECONDS + timeout_s))
while [ "$SECONDS" -lt "$deadline" ]; do
    addr=$(sed -n 's|^listening on http://\([^ ]*\)$|\1|p' "$work/serve.out" | head -n 1)
    [ -n "$addr" ] && break
    if ! kill -0 "$server_pid" 2>/dev/null; then
        wait "$server_pid" && status=0 || status=$?
        server_pid=
        cat "$work/serve.out" "$work/serve.err" >&2
        die "outpost serve exited with status $status before listening"
    fi
    sleep 0.5
done
if [ -z "$addr" ]; then
    cat "$work/serve.out" "$work/serve.err" >&2
    die "outpost serve printed no 'listening on' line within ${timeout_s}s"
fi
log "serving on $addr after $((SECONDS + timeout_s - deadline))s"

curl --silent --show-error --max-time "$timeout_s" --output "$work/body" \
    --write-out '%{http_code}' "http://$addr/" >"$work/status" || {
    cat "$work/serve.err" >&2
    die "curl http://$addr/ failed"
}
status=$(cat "$work/status")
[ "$status" = 200 ] || {
    cat "$work/body" "$work/serve.err" >&2
    die "GET http://$addr/ returned HTTP $status, want 200"
}
printf '%s\n' "$expected_body" | cmp -s - "$work/body" || {
    printf 'got body: ' >&2
    od -c "$work/body" | head -n 5 >&2
    die "GET http://$addr/ body is not '$expected_body\\n'"
}
log "GET http://$addr/ -> 200 '$expected_body'"

kill -TERM "$server_pid"
wait "$server_pid" && status=0 || status=$?
server_pid=
# timeout(1) exits 124 if it had to stop outpost itself; anything but a clean drain is a failure.
[ "$status" -eq 0 ] || {
    cat "$work/serve.err" >&2
    die "outpost serve exited with status $status after SIGTERM, want 0"
}
log "aarch64 smoke test passed"
