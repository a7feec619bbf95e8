#!/usr/bin/env bash
# The WASI 0.2 hello and the WASI 0.3 hello side by side on one Outpost binary.
#
#   bash benches/wasi.sh [BINARY] [DURATION_SECONDS] [ROUNDS]
#       (defaults: target/release/outpost, 10 s, 5 rounds)
#
# A is testbed/apps/hello (wasi:http/proxy, the WASI 0.2 engine), B is testbed/apps/hello-p3
# (wasi:http/handler, the WASI 0.3 engine), each served by `outpost serve --no-cache` on
# 127.0.0.1; `compare` (benches/lib.sh) alternates `wrk -t1 -c32` rounds between them and reports
# the median B/A ratio. Build first: `cargo build --release`.
#
# With REUSE_B=N in the environment, B serves hello-p3 with `reuse = N` in its manifest
# (docs/reuse.md): the WASI 0.3 hello reusing instances against the WASI 0.2 hello's default.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/outpost}
DURATION=${2:-10}
ROUNDS=${3:-5}
CONNS=32
[ -x "$BIN" ] || { echo "not an executable: $BIN (cargo build --release first)" >&2; exit 64; }
command -v wrk >/dev/null || { echo "wrk missing: apt-get install -y wrk" >&2; exit 1; }
APPS="${OUTPOST_APPS_TARGET_DIR:-${CARGO_TARGET_DIR:-target}/testbed-apps}/wasm32-wasip2/release"
for w in hello hello_p3; do
  [ -f "$APPS/$w.wasm" ] || { echo "$APPS/$w.wasm not built (cargo build first)" >&2; exit 1; }
done
# shellcheck source=benches/lib.sh
source benches/lib.sh

start a "$BIN" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$APPS/hello.wasm"
if [ -n "${REUSE_B:-}" ]; then
  mkdir -p "$WORK/p3"
  cp "$APPS/hello_p3.wasm" "$WORK/p3/"
  printf 'manifest_version = 1\n[application]\nname = "hello-p3"\nversion = "1.0.0"\n[component.main]\nsource = "hello_p3.wasm"\nroutes = ["/"]\nreuse = %s\n' "$REUSE_B" >"$WORK/p3/outpost.toml"
  start b "$BIN" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$WORK/p3"
else
  start b "$BIN" --log-level warn serve --no-cache --listen 127.0.0.1:0 "$APPS/hello_p3.wasm"
fi
[ "$(curl -fsS "$URL_a")" = "hello from outpost" ] || { echo "a: unexpected answer" >&2; exit 1; }
[ "$(curl -fsS "$URL_b")" = "hello from outpost p3" ] || { echo "b: unexpected answer" >&2; exit 1; }
for u in "$URL_a" "$URL_b"; do wrk -t1 -c$CONNS -d2s "$u" >/dev/null; done  # warm-up

compare "A WASI 0.2 hello" "B WASI 0.3 hello${REUSE_B:+, reuse = $REUSE_B}"
