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

declare -A RPS P99
RATIOS=""
for r in $(seq 1 "$ROUNDS"); do
  order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
  declare -A this
  for s in $order; do
    url_var="URL_$s"
    out=$(wrk -t1 -c$CONNS -d"${DURATION}s" --latency "${!url_var}")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
    errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)
    [ -z "$errs" ] || echo "round $r $s: $errs" >&2
    RPS[$s]+="$rps "; P99[$s]+="$p99 "; this[$s]=$rps
    echo "round $r: $s $rps req/s, p99 ${p99}us" >&2
  done
  RATIOS+="$(echo "${this[b]} / ${this[a]}" | bc -l | xargs printf '%.3f') "
done

echo
echo "| binary | req/s (median of $ROUNDS) | p99 latency (median) |"
echo "|---|---|---|"
printf '| A %s | %.0f | %.0f µs |\n' "$A" "$(echo "${RPS[a]}" | median)" "$(echo "${P99[a]}" | median)"
printf '| B %s | %.0f | %.0f µs |\n' "$B" "$(echo "${RPS[b]}" | median)" "$(echo "${P99[b]}" | median)"
echo
echo "B/A req/s per round: ${RATIOS}(median $(echo "$RATIOS" | median)x)"
echo "machine: $(nproc) cores, $(uname -m), wrk -t1 -c$CONNS -d${DURATION}s, $(date -u +%Y-%m-%d)"
