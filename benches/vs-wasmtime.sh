#!/usr/bin/env bash
# Outpost beside `wasmtime serve` on the same components, in one run: the Rust WASI 0.2 and
# WASI 0.3 hellos and the Python and JavaScript hellos of the test bed, each served by
#   A: `wasmtime serve -Scli` (the wasmtime CLI, same wasmtime release as Outpost embeds),
#   B: `outpost serve` with the defaults (a fresh instance per request),
# then again with B serving it with `reuse = 1000` (docs/reuse.md).
#
#   bash benches/vs-wasmtime.sh WASMTIME [BINARY] [DURATION_SECONDS] [ROUNDS] [WASM...]
#       (defaults: target/release/outpost, 10 s, 5 rounds, the four hellos below)
#
# REUSE_LINES in the environment replaces B's `reuse = 1000` manifest lines, e.g.
# REUSE_LINES=$'reuse = 1000\nreuse_concurrency = 32' for a WASI 0.3 component.
#
# The wasmtime CLI is not built here: `cargo install wasmtime-cli --version 48.0.8 --locked
# --root DIR` (about 20 minutes on 2 cores) and pass DIR/bin/wasmtime. The Python and JavaScript
# hellos come from `bash testbed/polyglot/build.sh target/testbed-polyglot` (the tests build them
# there too). `compare` (benches/lib.sh) alternates `wrk -t1 -c32` rounds between A and B and
# reports the median B/A ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
WASMTIME=${1:?usage: bash benches/vs-wasmtime.sh WASMTIME [BINARY] [DURATION] [ROUNDS]}
BIN=${2:-target/release/outpost}
DURATION=${3:-10}
ROUNDS=${4:-5}
shift $(( $# < 4 ? $# : 4 ))
REUSE_LINES=${REUSE_LINES:-reuse = 1000}
CONNS=32
[ -x "$WASMTIME" ] || { echo "not an executable: $WASMTIME" >&2; exit 64; }
[ -x "$BIN" ] || { echo "not an executable: $BIN (cargo build --release first)" >&2; exit 64; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
APPS="${OUTPOST_APPS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/testbed-apps}/wasm32-wasip2/release"
POLY="${CARGO_TARGET_DIR:-target}/testbed-polyglot"
GUESTS=("$APPS/hello.wasm" "$APPS/hello_p3.wasm" "$POLY/py-hello.wasm" "$POLY/js-hello.wasm")
if [ $# -gt 0 ]; then GUESTS=("$@"); fi
for w in "${GUESTS[@]}"; do [ -f "$w" ] || { echo "not built: $w" >&2; exit 1; }; done
# shellcheck source=benches/lib.sh
source benches/lib.sh
echo "wasmtime: $("$WASMTIME" --version)" >&2


port=18300
for w in "${GUESTS[@]}"; do
  name=$(basename "$w" .wasm)
  bench_app_dir "$WORK/$name-fresh" "$w" ""
  bench_app_dir "$WORK/$name-reuse" "$w" "$REUSE_LINES"
  for mode in fresh reuse; do
    port=$((port + 1))
    start a "$WASMTIME" serve -Scli --addr "127.0.0.1:$port" "$w"
    start b "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --listen 127.0.0.1:0 "$WORK/$name-$mode"
    warm_up "$name"
    echo
    echo "### $name ($(du -h "$w" | cut -f1)), Outpost $mode"
    compare "A wasmtime serve -Scli" "B outpost serve ($mode)"
    stop_servers
  done
done
