#!/usr/bin/env bash
# Hello-world load benchmark: Outpost vs native hyper vs `wasmtime serve`, side by side in one run.
#
#   bash benches/load.sh [DURATION_SECONDS] [ROUNDS]      (defaults: 10 s, 3 rounds)
#
# Same component (testbed/apps/hello, built by build.rs) for Outpost and `wasmtime serve -Scli`;
# the native baseline (benches/native_hello.rs) answers the same body on the same tokio + hyper
# stack. Each round runs `wrk -t1 -c32 -d${DURATION}s --latency` against each server in turn, so
# machine noise hits all of them alike; the table reports the median round and ratios.
# `wasmtime serve` is skipped with a note when not installed (cargo install wasmtime-cli@48.0.8).
# Everything listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
ROUNDS=${2:-3}
CONNS=32

command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
cargo build --release --locked --bin outpost --example native_hello >&2
TARGET_DIR=${CARGO_TARGET_DIR:-target}
HELLO="$TARGET_DIR/testbed-apps/wasm32-wasip2/release/hello.wasm"
OUTPOST="$TARGET_DIR/release/outpost"
NATIVE="$TARGET_DIR/release/examples/native_hello"
WASMTIME=$(command -v wasmtime || true)
# shellcheck source=benches/lib.sh
source benches/lib.sh

start outpost "$OUTPOST" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$HELLO"
start native "$NATIVE" 127.0.0.1:0
SERVERS=(outpost native)
if [ -n "$WASMTIME" ]; then
  port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  start wasmtime "$WASMTIME" serve -Scli --addr "127.0.0.1:$port" "$HELLO"
  SERVERS+=(wasmtime)
else
  echo "note: wasmtime not installed; skipping the wasmtime serve comparison" >&2
fi

for s in "${SERVERS[@]}"; do
  url_var="URL_$s"
  body=$(curl -fsS "${!url_var}")
  [ "$body" = "hello from outpost" ] || { echo "$s answered '$body'" >&2; exit 1; }
  wrk -t1 -c$CONNS -d2s "${!url_var}" >/dev/null  # warm-up
done

# wrk's p99 line is e.g. "     99%    1.23ms"; normalise to microseconds.
declare -A RPS P99
for r in $(seq 1 "$ROUNDS"); do
  for s in "${SERVERS[@]}"; do
    url_var="URL_$s"
    out=$(wrk -t1 -c$CONNS -d"${DURATION}s" --latency "${!url_var}")
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
    errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)
    [ -z "$errs" ] || echo "round $r $s: $errs" >&2
    RPS[$s]+="$rps "; P99[$s]+="$p99 "
    echo "round $r: $s $rps req/s, p99 ${p99}us" >&2
  done
done

o_rps=$(echo "${RPS[outpost]}" | median)
echo
echo "| server | req/s (median of $ROUNDS) | p99 latency | req/s vs Outpost |"
echo "|---|---|---|---|"
for s in "${SERVERS[@]}"; do
  m=$(echo "${RPS[$s]}" | median); p=$(echo "${P99[$s]}" | median)
  printf '| %s | %.0f | %.0f µs | %.2fx |\n' "$s" "$m" "$p" "$(echo "$m / $o_rps" | bc -l)"
done
echo
# Ratios within each round pair measurements taken a minute apart, so they drift less with the
# machine's load than the ratio of medians above.
per_round() {
  paste -d' ' <(echo "${RPS[outpost]}" | tr ' ' '\n' | grep -v '^$') \
    <(echo "${RPS[$1]}" | tr ' ' '\n' | grep -v '^$') | awk '{printf "%.2f ", $1 / $2}'
}
for s in "${SERVERS[@]}"; do
  [ "$s" = outpost ] && continue
  r=$(per_round "$s")
  echo "outpost / $s per round: ${r}(median $(echo "$r" | median)x)"
done
echo "machine: $(nproc) cores, $(uname -m), wrk -t1 -c$CONNS -d${DURATION}s, $(date -u +%Y-%m-%d)"
