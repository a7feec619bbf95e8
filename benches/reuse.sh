#!/usr/bin/env bash
# Fresh instance per request vs `reuse` (docs/reuse.md), side by side on one Outpost binary, for
# each component given.
#
#   bash benches/reuse.sh [BINARY] [DURATION_SECONDS] [ROUNDS] [WASM...]
#       (defaults: target/release/outpost, 10 s, 5 rounds, the test bed's hello and hello_p3)
#
# For every WASM, A serves it with the defaults (a fresh instance per request) and B with
# `reuse = 1000` in its manifest, each from an app directory by `outpost serve` on 127.0.0.1
# (one compiled-code cache shared by both, so big components compile once); `compare`
# (benches/lib.sh) alternates `wrk -t1 -c32` rounds between them and reports the median B/A
# ratio. Build first: `cargo build --release`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/outpost}
DURATION=${2:-10}
ROUNDS=${3:-5}
shift $(( $# < 3 ? $# : 3 ))
CONNS=32
[ -x "$BIN" ] || { echo "not an executable: $BIN (cargo build --release first)" >&2; exit 64; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
APPS="${OUTPOST_APPS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/testbed-apps}/wasm32-wasip2/release"
if [ $# -eq 0 ]; then set -- "$APPS/hello.wasm" "$APPS/hello_p3.wasm"; fi
for w in "$@"; do [ -f "$w" ] || { echo "no such component: $w" >&2; exit 1; }; done
# shellcheck source=benches/lib.sh
source benches/lib.sh


for w in "$@"; do
  name=$(basename "$w" .wasm)
  bench_app_dir "$WORK/$name-fresh" "$w" ""
  bench_app_dir "$WORK/$name-reuse" "$w" "reuse = 1000"
  echo "== $name ($(du -h "$w" | cut -f1))" >&2
  start a "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --listen 127.0.0.1:0 "$WORK/$name-fresh"
  start b "$BIN" --log-level warn serve --cache-dir "$WORK/cache" --listen 127.0.0.1:0 "$WORK/$name-reuse"
  warm_up "$name"
  echo
  echo "### $name"
  compare "A $name, fresh instance per request" "B $name, reuse = 1000"
  stop_servers
done
