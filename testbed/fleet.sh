#!/usr/bin/env bash
# Fleet simulation on one machine: one control plane and N node daemons (own state dirs, own
# ports, all on 127.0.0.1), each enrolled with its own one-time token. Then:
#   1. push a good release (app "web" 1.0.0, the hello component) in waves and time each wave;
#   2. push a bad release (1.1.0, a component that traps on every request) under steady traffic
#      and watch the first wave fail its error-rate gate and roll back by itself;
#   3. check every node still answers with 1.0.0.
#
#   bash testbed/fleet.sh [-n NODES] [--waves 5,25,100] [--bake 3s] [--poll 500ms] [--keep]
#                         [--binary PATH]
#
# Defaults: 20 nodes. Needs curl and jq. Each node runs with a small pool (16 slots, one worker
# thread) so 100 nodes fit a laptop; the traffic is one curl process per round hitting every node.
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=20
WAVES=5,25,100
BAKE=3s
POLL=500ms
KEEP=
OUTPOST=
while [ $# -gt 0 ]; do
    case $1 in
    -n | --nodes) NODES=$2; shift 2 ;;
    --waves) WAVES=$2; shift 2 ;;
    --bake) BAKE=$2; shift 2 ;;
    --poll) POLL=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --binary) OUTPOST=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
TB_NAME=fleet
# shellcheck source=testbed/lib.sh
. testbed/lib.sh # log, die, since, wait_line, make_bundle, report
for tool in curl jq; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install -y $tool)"
done
[[ $NODES =~ ^[0-9]+$ ]] && [ "$NODES" -ge 1 ] || die "-n wants a positive number, got $NODES"

# Relative or absolute CARGO_TARGET_DIR, or a target-dir from .cargo/config: cargo knows.
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
if [ -z "$OUTPOST" ]; then
    log "building outpost (release)"
    cargo build --release --locked --bin outpost >&2
    OUTPOST="$TARGET_DIR/release/outpost"
fi
APPS="$TARGET_DIR/testbed-apps/wasm32-wasip2/release"
for a in hello trap; do
    [ -f "$APPS/$a.wasm" ] || die "$APPS/$a.wasm missing (cargo build builds testbed/apps)"
done

WORK=$(mktemp -d -t outpost-fleet.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

# --- keys, bundles -------------------------------------------------------------------------
"$OUTPOST" bundle keygen --out release >/dev/null 2>&1
"$OUTPOST" bundle keygen --out operator >/dev/null 2>&1
make_bundle web 1.0.0 hello
make_bundle web 1.1.0 trap

# --- control plane -------------------------------------------------------------------------
cat >cp.toml <<TOML
listen = ["127.0.0.1:0"]
state_dir = "$WORK/cp"
operators = ["$WORK/operator.pub"]
TOML
"$OUTPOST" control-plane --config cp.toml >cp.out 2>cp.log &
PIDS+=($!)
CP=$(wait_line cp.out 'http://127\.0\.0\.1:[0-9]+')
CP_KEY=$(wait_line cp.out 'outpost-public-key-v1 [0-9a-f]+ [A-Za-z0-9+/=]+')
log "control plane at $CP"
export OUTPOST_CONTROL_PLANE=$CP OUTPOST_KEY=$WORK/operator.key

# --- nodes ---------------------------------------------------------------------------------
mapfile -t TOKENS < <("$OUTPOST" token create --count "$NODES" --ttl 1h)
[ "${#TOKENS[@]}" -eq "$NODES" ] || die "expected $NODES tokens, got ${#TOKENS[@]}"
t0=$(date +%s.%N)
for i in $(seq 1 "$NODES"); do
    mkdir -p "node$i"
    sim_node_config "$WORK/node$i/state" "$WORK/release.pub" "${TOKENS[$((i - 1))]}" \
        "sim-node-$i" "{ site = \"sim\", rack = \"r$(((i - 1) / 10))\" }" >"node$i/outpost.toml"
    "$OUTPOST" run -c "node$i/outpost.toml" >"node$i/out" 2>"node$i/log" &
    PIDS+=($!)
done
ADDRS=()
for i in $(seq 1 "$NODES"); do
    ADDRS+=("$(wait_line "node$i/out" 'http://127\.0\.0\.1:[0-9]+')")
done
for _ in $(seq 300); do
    enrolled=$("$OUTPOST" nodes list --json | jq length)
    [ "$enrolled" -ge "$NODES" ] && break
    sleep 0.2
done
[ "$enrolled" -ge "$NODES" ] || die "only $enrolled of $NODES nodes enrolled"
log "$NODES nodes up and enrolled in $(since "$t0") s"

# --- traffic -------------------------------------------------------------------------------
# One curl per round over every node; status codes tallied in traffic.log.
traffic() {
    local urls=()
    for a in "${ADDRS[@]}"; do urls+=("$a/"); done
    while :; do
        curl -s --parallel --parallel-max 64 -o /dev/null -w '%{http_code}\n' "${urls[@]}" >>traffic.log 2>/dev/null || true
        sleep 0.2
    done
}
traffic &
PIDS+=($!)

# --- good release --------------------------------------------------------------------------
log "pushing web 1.0.0 (waves $WAVES, bake $BAKE)"
t0=$(date +%s.%N)
"$OUTPOST" push web-1.0.0.bundle --group site=sim --waves "$WAVES" --bake "$BAKE" \
    --max-error-rate 0.05 >push-good.out 2>&1 || die "good push failed: $(tail -n 5 push-good.out)"
good_s=$(since "$t0")
GOOD_ID=$("$OUTPOST" rollout list --json | jq -r '[.[] | select(.version == "1.0.0")][0].id')
report "$GOOD_ID"
log "web 1.0.0 on all $NODES nodes in $good_s s (including $BAKE bake per wave)"
for a in "${ADDRS[@]}"; do
    curl -sf "$a/" | grep -q "hello from outpost" || die "$a does not serve web 1.0.0"
done

# --- bad release ---------------------------------------------------------------------------
log "pushing web 1.1.0 (its component traps on every request)"
: >traffic.log
t0=$(date +%s.%N)
if "$OUTPOST" push web-1.1.0.bundle --group site=sim --waves "$WAVES" --bake "$BAKE" \
    --max-error-rate 0.05 >push-bad.out 2>&1; then
    die "the bad release was not rolled back: $(tail -n 5 push-bad.out)"
fi
bad_s=$(since "$t0")
BAD_ID=$("$OUTPOST" rollout list --json | jq -r '[.[] | select(.version == "1.1.0")][0].id')
report "$BAD_ID"
state=$("$OUTPOST" rollout status "$BAD_ID" --json | jq -r .state)
[ "$state" = rolled_back ] || die "bad rollout ended $state, expected rolled_back"
log "bad release rolled back $bad_s s after the push"

# Every node back on (or still on) 1.0.0.
for _ in $(seq 100); do
    bad=0
    for a in "${ADDRS[@]}"; do
        curl -sf "$a/" 2>/dev/null | grep -q "hello from outpost" || bad=$((bad + 1))
    done
    [ "$bad" -eq 0 ] && break
    sleep 0.2
done
[ "$bad" -eq 0 ] || die "$bad nodes do not serve web 1.0.0 after the rollback"
failed=$(grep -c '^5' traffic.log || true)
total=$(wc -l <traffic.log)
log "all $NODES nodes serve web 1.0.0 again; during the bad rollout $failed of $total requests failed (only on the first wave's nodes)"
log "done"
