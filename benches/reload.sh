#!/usr/bin/env bash
# SIGHUP under load (issue 15): `wrk` drives the demo app on `outpost run` while the config is
# changed and reloaded several times — a new app host added, a broken file (refused), the good
# file back — and reports wrk's figures (non-2xx and socket errors must be 0) and the reloads the
# log shows.
#
#   bash benches/reload.sh [SECONDS] [CONNECTIONS]      (defaults: 20 s, 32 connections)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-20}
CONNS=${2:-32}
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUTPOST="$TARGET_DIR/release/outpost"
[ -x "$OUTPOST" ] || cargo build --release --locked --bin outpost >&2
ECHO="$TARGET_DIR/testbed-apps/wasm32-wasip2/release/echo.wasm"
[ -f "$ECHO" ] || { echo "missing $ECHO (cargo build builds testbed/apps)" >&2; exit 1; }
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT
cp "$ECHO" "$WORK/echo.wasm"

config() { # config EXTRA_APPS
  cat <<EOF
[node]
state_dir = "$WORK/state"
[listen]
http = ["127.0.0.1:0"]
[[app]]
source = "builtin:demo"
hosts = ["*"]
$1
EOF
}
config "" >"$WORK/outpost.toml"
"$OUTPOST" run --config "$WORK/outpost.toml" >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 1 600); do
  grep -q '^listening on http://' "$WORK/out" 2>/dev/null && break
  sleep 0.1
done
ADDR=$(sed -n 's|^listening on http://||p' "$WORK/out" | head -1)
[ -n "$ADDR" ] || { cat "$WORK/err" >&2; exit 1; }

wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://$ADDR/" >"$WORK/wrk" &
WRK=$!
step=$((DURATION / 5))
sleep "$step"
config $'[[app]]\nsource = "echo.wasm"\nhosts = ["echo.test"]' >"$WORK/outpost.toml"
kill -HUP "$PID"
sleep "$step"
echo "[listen" >"$WORK/outpost.toml"
kill -HUP "$PID"
sleep "$step"
config $'[[app]]\nsource = "echo.wasm"\nhosts = ["echo.test", "echo2.test"]' >"$WORK/outpost.toml"
kill -HUP "$PID"
wait "$WRK"
echo "new host after the reloads: $(curl -s -H 'host: echo2.test' --data-binary reloaded "http://$ADDR/")"
kill -0 "$PID" && echo "daemon still running after 3 HUPs"
echo "reloads applied: $(grep -c 'configuration reloaded' "$WORK/err"), refused: $(grep -c 'config reload refused' "$WORK/err")"
cat "$WORK/wrk"
grep -q 'Non-2xx' "$WORK/wrk" && echo "NON-2XX RESPONSES SEEN" || echo "non-2xx responses: 0"
