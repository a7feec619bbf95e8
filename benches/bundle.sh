#!/usr/bin/env bash
# Signed-bundle timings: pack / sign / verify / install of a ~10 MB bundle, and the time from
# starting `outpost run` (offline, serving from its store) to the first answered request.
#
#   bash benches/bundle.sh [ROUNDS]      (default 5; medians reported)
#
# The app is testbed/apps/config-reader plus 10 MB of incompressible static data, so pack and
# verify do real compression and hashing work. Everything stays on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
cargo build --release --locked --bin outpost >&2
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUTPOST="$PWD/$TARGET_DIR/release/outpost"
APPS="$PWD/$TARGET_DIR/testbed-apps/wasm32-wasip2/release"
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; rm -rf "$WORK"; }
trap cleanup EXIT
cd "$WORK"

mkdir app
cp "$APPS/config_reader.wasm" app/config-reader.wasm
head -c $((10 * 1024 * 1024)) /dev/urandom > app/data.bin
cat > app/outpost.toml <<'TOML'
manifest_version = 1
[application]
name = "big"
version = "1.0.0"
[component.main]
source = "config-reader.wasm"
routes = ["/"]
[component.main.variables]
greeting = "hi"
TOML
"$OUTPOST" bundle keygen --out key >/dev/null 2>&1
cat > node.toml <<'TOML'
[node]
state_dir = "state"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
[trust]
keys = ["key.pub"]
TOML

ms() { python3 -c 'import sys,time; print(int(time.time()*1000))'; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A T
for r in $(seq 1 "$ROUNDS"); do
  rm -rf state app.bundle app.bundle.sig
  t0=$(ms); "$OUTPOST" bundle pack app -o app.bundle >/dev/null 2>&1; t1=$(ms)
  "$OUTPOST" bundle sign app.bundle --key key.key 2>/dev/null; t2=$(ms)
  "$OUTPOST" bundle verify app.bundle --trust key.pub >/dev/null; t3=$(ms)
  "$OUTPOST" bundle install app.bundle --config node.toml >/dev/null; t4=$(ms)
  # Offline start: no [[app]], no network; time until the first 200.
  "$OUTPOST" --log-level warn run --config node.toml > run.out 2>run.err & PID=$!
  t5=$(ms)
  url=
  while [ -z "$url" ]; do url=$(grep -oE 'http://127\.0\.0\.1:[0-9]+' run.out | head -1 || true); done
  until curl -fsS "$url/greeting" >/dev/null 2>&1; do :; done
  t6=$(ms)
  kill "$PID"; wait "$PID" 2>/dev/null || true; PID=
  T[pack]+="$((t1-t0)) "; T[sign]+="$((t2-t1)) "; T[verify]+="$((t3-t2)) "
  T[install]+="$((t4-t3)) "; T[first]+="$((t6-t5)) "
  echo "round $r: pack $((t1-t0)) ms, sign $((t2-t1)) ms, verify $((t3-t2)) ms, install $((t4-t3)) ms, start→first response $((t6-t5)) ms" >&2
done
size=$(stat -c %s app.bundle)
echo
echo "| step (bundle $(( size / 1024 )) KiB, 10 MiB incompressible + component) | median of $ROUNDS, ms |"
echo "|---|---|"
for k in pack sign verify install first; do
  echo "| $k | $(echo "${T[$k]}" | tr ' ' '\n' | grep -v '^$' | median) |"
done
echo
echo "Each step is a whole CLI process (start, read, work, write); install includes precompiling"
echo "the component. 'first' = from starting \`outpost run\` (no [[app]], serving from its store, code"
echo "already compiled by the install) to the first 200 answered."
echo "machine: $(nproc) cores, $(uname -m), $(date +%F)"
