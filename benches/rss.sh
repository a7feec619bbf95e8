#!/usr/bin/env bash
# Idle resident memory of `outpost run` on its built-in demo: right after compiling the demo
# (cold code cache) and after a restart that loads the cached code (warm), for the derived pool
# size and for a Pi-sized 64-slot pool. Reads /proc/PID/smaps_rollup 3 s after the daemon
# printed its listeners.
#
#   bash benches/rss.sh [BINARY]     (default: a release build of this tree)
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ge 1 ]; then
    OUTPOST=$(realpath "$1")
else
    cargo build --release --locked --bin outpost >&2
    OUTPOST="$PWD/${CARGO_TARGET_DIR:-target}/release/outpost"
fi
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"
"$OUTPOST" run --print-default-config >base.toml

# $1 = label, $2 = extra [runtime] lines; prints "label  cold KiB  warm KiB".
measure() {
    local label=$1 extra=$2 cold warm
    rm -rf state
    { cat base.toml; printf '[runtime]\n%b\n' "$extra"; } | sed 's/^http = .*/http = ["127.0.0.1:0"]/; s/^admin = .*/admin = "127.0.0.1:0"/' >c.toml
    for phase in cold warm; do
        XDG_STATE_HOME="$WORK/state" "$OUTPOST" run -c c.toml >out.log 2>&1 &
        PID=$!
        for _ in $(seq 100); do grep -q '^listening on' out.log && break; sleep 0.1; done
        sleep 3
        local kib
        kib=$(awk '/^Rss:/{print $2}' "/proc/$PID/smaps_rollup")
        kill "$PID"
        wait "$PID" 2>/dev/null || true
        PID=
        if [ "$phase" = cold ]; then cold=$kib; else warm=$kib; fi
    done
    printf '%-28s %8s KiB %8s KiB\n' "$label" "$cold" "$warm"
}

slots=$("$OUTPOST" info | awk '$1 == "instance_slots" {print $2; exit}')
printf '%-28s %12s %12s\n' "pool" "cold cache" "warm cache"
measure "derived (${slots:-?} slots)" ""
measure "64 slots" "instance_slots = 64"
measure "64 slots, 1 worker thread" "instance_slots = 64\nworker_threads = 1"
