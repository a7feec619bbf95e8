#!/usr/bin/env bash
# A key-value read-modify-write request against hello-world, side by side on one Outpost binary
# (issue 18's target: the former at ≥ 50 % of the latter).
#
#   bash benches/kv.sh [BINARY] [DURATION_SECONDS] [ROUNDS]
#       (defaults: target/release/outpost, 10 s, 5 rounds)
#
# A: `outpost serve` of the test bed's `hello` (WASI 0.2, a fresh instance per request).
# B: `outpost serve --kv-dir` of `kv-counter` granted `key_value_stores = ["default"]`, asked for
#    `/rmw/default/n`: `wasi:keyvalue` `get`, add one, `set` — the embedded sled backend, on this
#    machine's disk, every write made durable before the guest's call returns
#    (docs/key-value.md).
# `compare` (benches/lib.sh) alternates `wrk -t1 -c$CONNS` rounds and reports the median B/A.
# Build first: `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/outpost}
DURATION=${2:-10}
ROUNDS=${3:-5}
CONNS=16
[ -x "$BIN" ] || { echo "not an executable: $BIN (cargo build --release first)" >&2; exit 64; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
APPS="${OUTPOST_APPS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/testbed-apps}/wasm32-wasip2/release"
for w in hello kv_counter; do
  [ -f "$APPS/$w.wasm" ] || { echo "no such component: $APPS/$w.wasm (cargo build first)" >&2; exit 1; }
done
# shellcheck source=benches/lib.sh
source benches/lib.sh

bench_app_dir "$WORK/hello" "$APPS/hello.wasm" ""
bench_app_dir "$WORK/kv" "$APPS/kv_counter.wasm" 'key_value_stores = ["default"]'
start a "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --listen 127.0.0.1:0 "$WORK/hello"
start b "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --kv-dir "$WORK/kv-data" --listen 127.0.0.1:0 "$WORK/kv"
URL_b="${URL_b}rmw/default/n"
warm_up kv
echo
echo "### key-value read-modify-write vs hello-world (disk: $(df -T "$WORK" | awk 'NR==2 {print $2}'))"
compare "A hello, GET /" "B kv-counter, /rmw/default/n (get + set, sled)"
echo "counter after the run: $(curl -fsS "$URL_b")"
