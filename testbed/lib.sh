# shellcheck shell=bash
# Helpers shared by testbed/fleet.sh and testbed/gateway.sh. Sourced, never executed.
#
# Owns: the testbed's log format, waiting for a line in a daemon's output, packing and signing
#       a one-component test bundle, a simulated node's config, operator commands against a
#       control plane and the per-wave rollout report.
# Must not: change the caller's shell options, start or kill processes, or run anything when
#           sourced.
#
# The caller sets TB_NAME (the log prefix: "[fleet 12:34:56] ..."), OUTPOST (the host binary),
# APPS (the directory holding the testbed components, e.g. hello.wasm) and, for a control plane
# with a private CA, TB_OP_ARGS=(--ca CA.pem): extra arguments for every operator command.

TB_NAME=${TB_NAME:-testbed}
TB_OP_ARGS=()

log() { printf '[%s %s] %s\n' "$TB_NAME" "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Seconds since $1 (a `date +%s.%N` value), one decimal.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# sim_node_config STATE TRUST TOKEN NAME LABELS [CA]: prints the config of one simulated node
# on the host: state in STATE, 16 instance slots and one worker thread (many share two cores),
# release key file TRUST, enrolling with TOKEN as NAME with LABELS (an inline TOML table), and
# the control plane's CA file CA if given. Uses the caller's CP (URL), CP_KEY and POLL.
sim_node_config() {
    local state=$1 trust=$2 token=$3 name=$4 labels=$5 ca=${6:-}
    cat <<TOML
[node]
state_dir = "$state"
[listen]
http = ["127.0.0.1:0"]
[runtime]
instance_slots = 16
worker_threads = 1
[trust]
keys = ["$trust"]
[control_plane]
url = "$CP"
key = "$CP_KEY"
TOML
    [ -z "$ca" ] || printf 'ca = "%s"\n' "$ca"
    cat <<TOML
token = "$token"
poll_interval = "$POLL"
name = "$name"
labels = $labels
TOML
}

# Waits until file $1 has a line matching $2 (ERE), prints the match. $3: how many tenths of a
# second to wait (default 300, 30 s).
wait_line() {
    local file=$1 pattern=$2 tries=${3:-300}
    for _ in $(seq "$tries"); do
        if grep -m1 -oE "$pattern" "$file" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    die "timed out waiting for /$pattern/ in $file: $(tail -n 5 "$file" 2>/dev/null)"
}

# An operator command (`outpost push`, `rollout`, `nodes`, `token`) with TB_OP_ARGS appended.
# The control plane and key come from OUTPOST_CONTROL_PLANE and OUTPOST_KEY.
op() { "$OUTPOST" "$@" "${TB_OP_ARGS[@]}"; }

# make_bundle NAME VERSION WASM: NAME-VERSION.bundle (+ .sig, signed with ./release.key) in the
# current directory, one component $APPS/WASM.wasm routed at "/".
make_bundle() {
    mkdir -p "app-$2"
    cp "$APPS/$3.wasm" "app-$2/$3.wasm"
    cat >"app-$2/outpost.toml" <<TOML
manifest_version = 1
[application]
name = "$1"
version = "$2"
[component.main]
source = "$3.wasm"
routes = ["/"]
TOML
    "$OUTPOST" bundle pack "app-$2" -o "$1-$2.bundle" >/dev/null 2>&1
    "$OUTPOST" bundle sign "$1-$2.bundle" --key release.key >/dev/null 2>&1
}

# Prints per-wave convergence of rollout $1 from its status.
report() {
    op rollout status "$1" --json | jq -r '
      "rollout \(.id): \(.app) \(.version) -> \(.state)\(if .reason then " (\(.reason))" else "" end)",
      (.waves | to_entries[] | "  wave \(.key + 1) (\(.value.percent)%, \(.value.nodes | length) nodes): \(.value.state)" +
        (if .value.converged_ms and .value.started_ms then
           ", converged in \(((.value.converged_ms - .value.started_ms) / 1000 * 100 | round) / 100) s" else "" end) +
        ", \(.value.requests) requests, \(.value.errors) errors")'
}
