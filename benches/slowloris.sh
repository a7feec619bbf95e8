#!/usr/bin/env bash
# Slow-header flood against `outpost run` (issue 15): N connections each send part of a request
# head and then one more header line a second (reconnecting when the server closes them, as an
# attacker would), above the connection cap; meanwhile a normal client (curl) asks for / once
# every half second. Reports the normal client's statuses and times, how many slow connections
# the server closed, and the daemon's open file descriptors; then the same against the admin
# listener (its own, smaller cap).
#
#   bash benches/slowloris.sh [SLOW_CONNECTIONS] [SECONDS] [ADMIN_SLOW_CONNECTIONS]
#       (defaults: 2100 connections, 20 s, 3000 admin connections)
#
# Uses the release binary (built if missing) with `[runtime] max_connections = 2048` and the
# default deadlines (listen.header_timeout 10 s). Everything on 127.0.0.1; needs `ulimit -n`
# above twice the connection count (script and daemon each hold one fd per connection).
set -euo pipefail
cd "$(dirname "$0")/.."
SLOW=${1:-2100}
SECONDS_=${2:-20}
ADMIN_SLOW=${3:-3000}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
OUTPOST="$TARGET_DIR/release/outpost"
[ -x "$OUTPOST" ] || cargo build --release --locked --bin outpost >&2
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK=$(mktemp -d)
PID=
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

cat >"$WORK/outpost.toml" <<EOF
[node]
state_dir = "$WORK/state"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
[runtime]
max_connections = 2048
[[app]]
source = "builtin:demo"
hosts = ["*"]
EOF
"$OUTPOST" --log-level warn run --config "$WORK/outpost.toml" >"$WORK/out" 2>"$WORK/err" &
PID=$!
for _ in $(seq 1 600); do
  grep -q '^admin listening on' "$WORK/out" 2>/dev/null && break
  sleep 0.1
done
TENANT=$(sed -n 's|^listening on http://||p' "$WORK/out" | head -1)
ADMIN=$(sed -n 's|^admin listening on http://||p' "$WORK/out" | head -1)
[ -n "$TENANT" ] && [ -n "$ADMIN" ] || { cat "$WORK/err" >&2; exit 1; }

flood() { # flood ADDR CONNECTIONS SECONDS PATH
python3 - "$@" "$PID" <<'PY'
import asyncio, subprocess, sys, time, os, statistics
addr, n, secs, path, pid = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5]
host, port = addr.rsplit(":", 1)
closed = 0
async def slow():
    global closed
    while True:
        try:
            r, w = await asyncio.open_connection(host, int(port))
            w.write(b"GET / HTTP/1.1\r\nHost: x\r\n"); await w.drain()
            while True:
                try:
                    # The server closing shows up as EOF on read; otherwise trickle on.
                    if await asyncio.wait_for(r.read(1), 1.0) == b"":
                        break
                except asyncio.TimeoutError:
                    w.write(b"X-Slow: a\r\n"); await w.drain()
            closed += 1
            w.close()
        except (ConnectionError, OSError):
            closed += 1
            await asyncio.sleep(0.05)
async def main():
    tasks = [asyncio.create_task(slow()) for _ in range(n)]
    await asyncio.sleep(3)  # all connected and sending
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    results = []
    end = time.time() + secs
    while time.time() < end:
        p = await asyncio.create_subprocess_exec(
            "curl", "-s", "-o", "/dev/null", "-m", "30", "-w", "%{http_code} %{time_total}",
            f"http://{addr}{path}", stdout=subprocess.PIPE)
        out, _ = await p.communicate()
        code, t = out.decode().split()
        results.append((code, float(t)))
        await asyncio.sleep(0.5)
    codes = {}
    for c, _ in results:
        codes[c] = codes.get(c, 0) + 1
    times = sorted(t for _, t in results)
    print(f"  slow connections: {n} (reconnecting); closed by the server during the run: {closed}")
    print(f"  daemon open fds 3 s into the flood: {fds}")
    print(f"  normal client: {len(results)} requests, statuses {codes}, "
          f"time median {statistics.median(times)*1000:.1f} ms, max {times[-1]*1000:.1f} ms")
    for t in tasks: t.cancel()
asyncio.run(main())
PY
}

echo "tenant listener $TENANT, max_connections 2048, header_timeout 10s (default):"
flood "$TENANT" "$SLOW" "$SECONDS_" /
echo "admin listener $ADMIN, admin_max_connections 64 (default):"
flood "$ADMIN" "$ADMIN_SLOW" "$SECONDS_" /healthz
echo "closed connections by reason:"
curl -s "http://$ADMIN/metrics" | grep '^outpost_connections_closed_total' | sed 's/^/  /'
