#!/usr/bin/env bash
# Sequential reuse vs `reuse_concurrency` (docs/reuse.md) for WASI 0.3 guests, side by side on one
# Outpost binary.
#
#   bash benches/reuse-concurrent.sh [BINARY] [DURATION_SECONDS] [ROUNDS]
#       (defaults: target/release/outpost, 10 s, 5 rounds)
#
# Two cases, each A (`reuse = 1000`: one request at a time per instance) against B (the same
# plus `reuse_concurrency`), from app directories served by `outpost serve` on 127.0.0.1, with
# `compare` (benches/lib.sh) alternating `wrk -t1 -c$CONNS` rounds:
#   1. hello_p3, a handler that answers without waiting (`reuse_concurrency = 8`);
#   2. fetch2_p3's `/count?wait=URL`, a handler that waits on an upstream for 20 ms (the test
#      bed's `slow` guest, `/sleep/20`, served by a third `outpost serve`), with
#      `reuse_concurrency = 64`; after the rounds, each server's peak RSS (VmHWM), which shows
#      how many instances each needed.
# Build first: `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/outpost}
DURATION=${2:-10}
ROUNDS=${3:-5}
CONNS=32
[ -x "$BIN" ] || { echo "not an executable: $BIN (cargo build --release first)" >&2; exit 64; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
APPS="${OUTPOST_APPS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/testbed-apps}/wasm32-wasip2/release"
for w in hello_p3 fetch2_p3 slow; do
  [ -f "$APPS/$w.wasm" ] || { echo "no such component: $APPS/$w.wasm (cargo build first)" >&2; exit 1; }
done
# shellcheck source=benches/lib.sh
source benches/lib.sh

serve() { start "$1" "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --listen 127.0.0.1:0 "$2"; }
hwm() { awk '/VmHWM/ {printf "%.0f MiB", $2/1024}' "/proc/$1/status"; }

bench_app_dir "$WORK/hello-seq" "$APPS/hello_p3.wasm" "reuse = 1000"
bench_app_dir "$WORK/hello-conc" "$APPS/hello_p3.wasm" $'reuse = 1000\nreuse_concurrency = 8'
serve a "$WORK/hello-seq"
serve b "$WORK/hello-conc"
warm_up hello_p3
echo
echo "### hello_p3: answers without waiting"
compare "A hello_p3, reuse = 1000" "B hello_p3, reuse = 1000, reuse_concurrency = 8"
stop_servers

bench_app_dir "$WORK/slow" "$APPS/slow.wasm" ""
serve up "$WORK/slow"
grant="allowed_outbound_hosts = [\"${URL_up%/}\"]"
bench_app_dir "$WORK/wait-seq" "$APPS/fetch2_p3.wasm" "$grant"$'\nreuse = 1000'
bench_app_dir "$WORK/wait-conc" "$APPS/fetch2_p3.wasm" "$grant"$'\nreuse = 1000\nreuse_concurrency = 64'
serve a "$WORK/wait-seq"
serve b "$WORK/wait-conc"
wait_path="count?wait=$(printf '%s' "${URL_up}sleep/20" | sed 's/:/%3A/g; s|/|%2F|g')"
URL_a="${URL_a}${wait_path}"
URL_b="${URL_b}${wait_path}"
warm_up fetch2_p3
echo
echo "### fetch2_p3 /count?wait=…/sleep/20: waits 20 ms on an upstream"
compare "A waiting handler, reuse = 1000" "B waiting handler, reuse = 1000, reuse_concurrency = 64"
echo "peak RSS: A $(hwm "${PIDS[1]}"), B $(hwm "${PIDS[2]}") (upstream $(hwm "${PIDS[0]}"))"
