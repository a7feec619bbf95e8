#!/usr/bin/env bash
# The control plane at fleet scale (issue 20): NODES simulated nodes (benches/fleet_sim.rs: the
# real protocol — own keys, one-time tokens, signed requests, held syncs, desired-state checks,
# bundle downloads with digest checks, health reports — without wasm) against one
# `outpost control-plane`, all on this machine. Reports:
#   - idle: the control plane's CPU (% of one core) and RSS while every node holds its sync, and
#     requests and bytes per node per hour (counted by the simulator);
#   - push: `outpost push` with waves WAVES and no bake, push → every node running the release
#     (the simulator's last apply), and per wave start → converged from the rollout's record;
#     the control plane's CPU and peak RSS over the push.
#
#   bash benches/fleet-sim.sh [-n NODES] [--waves 1,10,50,100] [--idle SECS] [--poll 10s]
#                             [--binary PATH] [--sim PATH] [--keep]
#
# Defaults: 1000 nodes, waves 1,10,50,100, 70 s idle window (longer than one quiet hold), 10 s poll.
# Needs jq. Build first: `cargo build --release --bin outpost --example fleet_sim`.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=1000
WAVES=1,10,50,100
IDLE=70
POLL=10s
KEEP=
OUTPOST=
SIM=
while [ $# -gt 0 ]; do
    case $1 in
    -n | --nodes) NODES=$2; shift 2 ;;
    --waves) WAVES=$2; shift 2 ;;
    --idle) IDLE=$2; shift 2 ;;
    --poll) POLL=$2; shift 2 ;;
    --binary) OUTPOST=$(realpath "$2"); shift 2 ;;
    --sim) SIM=$(realpath "$2"); shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
TB_NAME=fleet-sim
# shellcheck source=testbed/lib.sh
. testbed/lib.sh # log, die, since, wait_line
command -v jq >/dev/null || die "needs jq (apt-get install -y jq)"
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
OUTPOST=${OUTPOST:-$TARGET_DIR/release/outpost}
SIM=${SIM:-$TARGET_DIR/release/examples/fleet_sim}
[ -x "$OUTPOST" ] || die "no binary at $OUTPOST (cargo build --release, or --binary PATH)"
[ -x "$SIM" ] || die "no simulator at $SIM (cargo build --release --example fleet_sim, or --sim PATH)"
APPS="${OUTPOST_APPS_TARGET_DIR:-$TARGET_DIR/testbed-apps}/wasm32-wasip2/release"
[ -f "$APPS/hello.wasm" ] || die "$APPS/hello.wasm missing (cargo build builds testbed/apps)"
# Every held sync is a socket on both sides.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((NODES + 256)) ] || die "ulimit -n is $(ulimit -n); $NODES nodes need more"

WORK=$(mktemp -d -t outpost-fleet-sim.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

"$OUTPOST" bundle keygen --out release >/dev/null 2>&1
"$OUTPOST" bundle keygen --out operator >/dev/null 2>&1
mkdir app
cp "$APPS/hello.wasm" app/hello.wasm
cat >app/outpost.toml <<TOML
manifest_version = 1
[application]
name = "hello"
version = "1.0.0"
[component.main]
source = "hello.wasm"
routes = ["/"]
TOML
"$OUTPOST" bundle pack app -o hello.bundle >/dev/null 2>&1
"$OUTPOST" bundle sign hello.bundle --key release.key >/dev/null 2>&1

cat >cp.toml <<TOML
listen = ["127.0.0.1:0"]
state_dir = "$WORK/cp"
operators = ["$WORK/operator.pub"]
max_connections = $((NODES + 1024))
TOML
"$OUTPOST" control-plane --config cp.toml >cp.out 2>cp.log &
CP_PID=$!
PIDS+=("$CP_PID")
CP=$(wait_line cp.out 'http://127\.0\.0\.1:[0-9]+')
export OUTPOST_CONTROL_PLANE=$CP OUTPOST_KEY=$WORK/operator.key

"$SIM" --control-plane "$CP" --operator-key operator.key --cp-key cp/control.pub \
    -n "$NODES" --poll "$POLL" --labels site=sim >sim.out 2>sim.log &
PIDS+=($!)
last() { tail -n 1 sim.out; }
t0=$(date +%s.%N)
for _ in $(seq 1200); do
    line=$(last)
    if [ -n "$line" ] && [ "$(jq .enrolled <<<"$line")" -ge "$NODES" ] &&
        [ "$(jq .holding <<<"$line")" -ge "$NODES" ]; then
        break
    fi
    sleep 0.5
done
line=$(last)
[ "$(jq .holding <<<"$line")" -ge "$NODES" ] || die "only $(jq -c '{enrolled,holding,errors}' <<<"$line") after 10 min; see $WORK/sim.log"
log "$NODES nodes enrolled and holding their syncs after $(since "$t0") s"

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$CP_PID/stat"; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$CP_PID/status"; }
HZ=$(getconf CLK_TCK)

# --- idle ---------------------------------------------------------------------------------------
sleep 2
a=$(last); c0=$(cpu_ticks); s0=$(date +%s.%N)
sleep "$IDLE"
b=$(last); c1=$(cpu_ticks); secs=$(since "$s0")
rss=$(rss_kib)
per_hour() { # FIELD: per node per hour over the window
    echo "scale=1; ($(jq ".$1" <<<"$b") - $(jq ".$1" <<<"$a")) * 3600 / $NODES / $secs" | bc
}
echo "## fleet simulation: $NODES nodes, poll $POLL, $(nproc) cores, $(date -u +%F)"
echo
echo "### idle, ${secs}s window (every node holding a sync)"
echo "- control plane CPU: $(echo "scale=2; ($c1 - $c0) * 100 / $HZ / $secs" | bc) % of one core; RSS $((rss / 1024)) MiB"
echo "- per node per hour: $(per_hour requests) requests, $(per_hour bytes_out) bytes sent, $(per_hour bytes_in) bytes received (bodies)"

# --- push ---------------------------------------------------------------------------------------
c0=$(cpu_ticks); peak=$(rss_kib)
p0=$(date +%s%3N)
"$OUTPOST" push hello.bundle --group site=sim --waves "$WAVES" --bake 0s >push.out 2>&1 ||
    die "push failed: $(tail -n 5 push.out)"
p1=$(date +%s%3N)
for _ in $(seq 600); do
    line=$(last)
    [ "$(jq '.versions["hello@1.0.0"].nodes // 0' <<<"$line")" -ge "$NODES" ] && break
    r=$(rss_kib); [ "$r" -gt "$peak" ] && peak=$r
    sleep 0.2
done
c1=$(cpu_ticks)
line=$(last)
done_ms=$(jq '.versions["hello@1.0.0"].last_ms' <<<"$line")
n=$(jq '.versions["hello@1.0.0"].nodes // 0' <<<"$line")
[ "$n" -ge "$NODES" ] || die "only $n of $NODES nodes run the release; see $WORK"
echo
echo "### push, waves $WAVES, no bake"
echo "- push → all $NODES nodes running it: $(echo "scale=2; ($done_ms - $p0) / 1000" | bc) s (\`outpost push\` returned after $(echo "scale=2; ($p1 - $p0) / 1000" | bc) s)"
"$OUTPOST" rollout list --json | jq -r '.[0].waves[] |
    "- wave \(.percent)% (\(.nodes | length) nodes): start → converged \((.converged_ms - .started_ms) / 1000) s"'
echo "- control plane over the push: $(echo "scale=2; ($c1 - $c0) / $HZ" | bc) CPU seconds, peak RSS $((peak / 1024)) MiB"
echo "- simulator: $(jq .downloads <<<"$line") bundle downloads, $(jq .errors <<<"$line") errors"
log "done"
