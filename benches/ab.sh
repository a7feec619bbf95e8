#!/usr/bin/env bash
# Two Outpost binaries side by side on the same hello component: "did this change cost anything?"
#
#   bash benches/ab.sh BINARY_A BINARY_B [DURATION_SECONDS] [ROUNDS]     (defaults: 10 s, 5 rounds)
#
# Both serve testbed/apps/hello (built by build.rs) with `outpost serve --no-cache` on 127.0.0.1.
# Each round runs `wrk -t1 -c32 -d${DURATION}s --latency` against A, then B (and alternates the
# order every other round), so machine noise hits both alike; the table reports medians and the
# per-round B/A ratios, whose median is the figure to quote. Build the two binaries first, e.g.
# the parent commit in a worktree with its own CARGO_TARGET_DIR and this one with
# `cargo build --release --bin outpost`.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { sed -n 2,10p "$0" >&2; exit 64; }
A=$1
B=$2
DURATION=${3:-10}
ROUNDS=${4:-5}
CONNS=32
for bin in "$A" "$B"; do
  [ -x "$bin" ] || { echo "not an executable: $bin" >&2; exit 64; }
done
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
HELLO="${CARGO_TARGET_DIR:-target}/testbed-apps/wasm32-wasip2/release/hello.wasm"
[ -f "$HELLO" ] || HELLO="${OUTPOST_APPS_TARGET_DIR:-target/testbed-apps}/wasm32-wasip2/release/hello.wasm"
[ -f "$HELLO" ] || { echo "hello.wasm not built (cargo build first)" >&2; exit 1; }
# shellcheck source=benches/lib.sh
source benches/lib.sh

start a "$A" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$HELLO"
start b "$B" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$HELLO"
for s in a b; do
  url_var="URL_$s"
  body=$(curl -fsS "${!url_var}")
  [ "$body" = "hello from outpost" ] || { echo "$s answered '$body'" >&2; exit 1; }
  wrk -t1 -c$CONNS -d2s "${!url_var}" >/dev/null  # warm-up
done

compare "A $A" "B $B"
