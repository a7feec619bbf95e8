#!/usr/bin/env bash
# Bundle distribution, side by side in one run (issue 19): N node daemons on this machine
# install a large release (default 10 MiB, incompressible) twice —
#   A. uploaded to the control plane, which serves it to every node (`outpost push APP.bundle`);
#   B. pushed to a local OCI registry (Debian's docker-registry) and rolled out by reference
#      (`outpost push oci://…`): the nodes pull it from the registry, the control plane serves
#      no byte of it.
# Both are one wave of 100 %, no bake. Reported per run: push → all nodes converged, each node's
# fetch time (its "bundle fetched … ms=" log line), the aggregate rate, and the bytes each source
# served, summed from the nodes' `outpost_bundle_fetch_bytes_total{source_kind}` metrics (and the
# control plane's "sending bundle" log lines).
#
#   bash benches/distribution.sh [-n NODES] [--size BYTES] [--binary PATH] [--keep]
#
# Defaults: 20 nodes, 10485760 bytes. Needs curl, jq, docker-registry. Build first:
# `cargo build --release` (or pass --binary).
set -euo pipefail
cd "$(dirname "$0")/.."

NODES=20
SIZE=10485760
KEEP=
OUTPOST=
while [ $# -gt 0 ]; do
    case $1 in
    -n | --nodes) NODES=$2; shift 2 ;;
    --size) SIZE=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --binary) OUTPOST=$(realpath "$2"); shift 2 ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
POLL=500ms
TB_NAME=distribution
# shellcheck source=testbed/lib.sh
. testbed/lib.sh # log, die, since, wait_line, report
for tool in curl jq /usr/bin/docker-registry; do
    command -v "$tool" >/dev/null || die "needs $tool (apt-get install -y curl jq docker-registry)"
done
TARGET_DIR=$(cargo metadata --no-deps --format-version 1 | jq -r .target_directory)
OUTPOST=${OUTPOST:-$TARGET_DIR/release/outpost}
[ -x "$OUTPOST" ] || die "no binary at $OUTPOST (cargo build --release, or --binary PATH)"
APPS="${OUTPOST_APPS_TARGET_DIR:-$TARGET_DIR/testbed-apps}/wasm32-wasip2/release"
[ -f "$APPS/hello.wasm" ] || die "$APPS/hello.wasm missing (cargo build builds testbed/apps)"

WORK=$(mktemp -d -t outpost-distribution.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "$KEEP" ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
cd "$WORK"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- keys, two large releases --------------------------------------------------------------
"$OUTPOST" bundle keygen --out release >/dev/null 2>&1
"$OUTPOST" bundle keygen --out operator >/dev/null 2>&1
big_bundle() { # VERSION: web-VERSION.bundle (+ .sig) with $SIZE random bytes granted at /data
    mkdir -p "app-$1/data"
    cp "$APPS/hello.wasm" "app-$1/hello.wasm"
    head -c "$SIZE" /dev/urandom >"app-$1/data/blob"
    cat >"app-$1/outpost.toml" <<TOML
manifest_version = 1
[application]
name = "web"
version = "$1"
[component.main]
source = "hello.wasm"
routes = ["/"]
files = [{ source = "data", destination = "/data" }]
TOML
    "$OUTPOST" bundle pack "app-$1" -o "web-$1.bundle" >/dev/null 2>&1
    "$OUTPOST" bundle sign "web-$1.bundle" --key release.key >/dev/null 2>&1
}
big_bundle 1.0.0
big_bundle 2.0.0
log "two releases of $(stat -c %s web-1.0.0.bundle) and $(stat -c %s web-2.0.0.bundle) bytes"

# --- registry ------------------------------------------------------------------------------
REG_PORT=$(free_port)
cat >registry.yml <<YML
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $WORK/registry
http:
  addr: 127.0.0.1:$REG_PORT
  secret: distribution-bench
YML
/usr/bin/docker-registry serve registry.yml >registry.log 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
REF="oci://127.0.0.1:$REG_PORT/bench/web:2.0.0"
"$OUTPOST" bundle push web-2.0.0.bundle "$REF" --insecure >/dev/null 2>bundle-push.log ||
    die "bundle push failed: $(tail -n 3 bundle-push.log)"
log "registry at 127.0.0.1:$REG_PORT holds $REF"

# --- control plane and nodes ---------------------------------------------------------------
cat >cp.toml <<TOML
listen = ["127.0.0.1:0"]
state_dir = "$WORK/cp"
operators = ["$WORK/operator.pub"]
TOML
"$OUTPOST" control-plane --config cp.toml >cp.out 2>cp.log &
PIDS+=($!)
CP=$(wait_line cp.out 'http://127\.0\.0\.1:[0-9]+')
CP_KEY=$(wait_line cp.out 'outpost-public-key-v1 [0-9a-f]+ [A-Za-z0-9+/=]+')
export OUTPOST_CONTROL_PLANE=$CP OUTPOST_KEY=$WORK/operator.key
mapfile -t TOKENS < <("$OUTPOST" token create --count "$NODES" --ttl 1h)
for i in $(seq 1 "$NODES"); do
    mkdir -p "node$i"
    cat >"node$i/outpost.toml" <<TOML
[node]
state_dir = "$WORK/node$i/state"
[listen]
http = ["127.0.0.1:0"]
admin = "127.0.0.1:0"
[runtime]
instance_slots = 16
worker_threads = 1
[trust]
keys = ["$WORK/release.pub"]
[registry]
insecure = ["127.0.0.1"]
[control_plane]
url = "$CP"
key = "$CP_KEY"
token = "${TOKENS[$((i - 1))]}"
poll_interval = "$POLL"
name = "bench-node-$i"
labels = { site = "bench" }
TOML
    "$OUTPOST" run -c "node$i/outpost.toml" >"node$i/out" 2>"node$i/log" &
    PIDS+=($!)
done
ADMINS=()
for i in $(seq 1 "$NODES"); do
    ADMINS+=("$(wait_line "node$i/out" 'admin listening on http://127\.0\.0\.1:[0-9]+' | sed 's/^admin listening on //')")
done
for _ in $(seq 300); do
    [ "$("$OUTPOST" nodes list --json | jq length)" -ge "$NODES" ] && break
    sleep 0.2
done
log "$NODES nodes enrolled"

# Sum over the nodes of a metric series (exact text before the value).
node_sum() {
    local total=0 v
    for a in "${ADMINS[@]}"; do
        v=$(curl -s "$a/metrics" | awk -v s="$1" 'index($0, s " ") == 1 { print $2 }')
        total=$(echo "$total + ${v:-0}" | bc)
    done
    echo "$total"
}
CP_SERIES='outpost_bundle_fetch_bytes_total{source_kind="control_plane"}'
REG_SERIES='outpost_bundle_fetch_bytes_total{source_kind="registry"}'
# Median and max of the "bundle fetched … ms=N" lines for VERSION's digest in every node log.
fetch_ms() {
    local digest
    digest=$(sha256sum "web-$1.bundle" | cut -d' ' -f1)
    grep -h "bundle fetched" node*/log | grep "$digest" | grep -oE 'ms=[0-9]+' | cut -d= -f2 |
        sort -n | awk '{ a[NR] = $1 } END { if (NR) printf "median %d ms, max %d ms (%d nodes)", a[int((NR + 1) / 2)], a[NR], NR }'
}
run_push() { # LABEL WHAT [ARGS...]: push, wait for the rollout, print its figures
    local label=$1 what=$2 t0 secs cp0 reg0 cp1 reg1 sent0 sent1
    shift 2
    cp0=$(node_sum "$CP_SERIES")
    reg0=$(node_sum "$REG_SERIES")
    sent0=$(grep -c "sending bundle" cp.log || true)
    t0=$(date +%s.%N)
    "$OUTPOST" push "$what" --group site=bench --waves 100 --bake 0s "$@" >"push-$label.out" 2>&1 ||
        die "push $label failed: $(tail -n 5 "push-$label.out")"
    secs=$(since "$t0")
    cp1=$(node_sum "$CP_SERIES")
    reg1=$(node_sum "$REG_SERIES")
    sent1=$(grep -c "sending bundle" cp.log || true)
    local version=${label#*-} bytes
    bytes=$(stat -c %s "web-$version.bundle")
    echo
    echo "### $label: $what"
    echo "- all $NODES nodes converged $secs s after the push ($(echo "scale=1; $NODES * $bytes / 1048576 / $secs" | bc) MiB/s aggregate, $bytes bytes per node)"
    echo "- per-node fetch: $(fetch_ms "$version")"
    echo "- bytes from the control plane: $(echo "$cp1 - $cp0" | bc) (its log: $((sent1 - sent0)) bundles sent)"
    echo "- bytes from the registry: $(echo "$reg1 - $reg0" | bc)"
}

echo "## bundle distribution: $NODES nodes, $SIZE random bytes per bundle, $(nproc) cores, $(date -u +%F)"
run_push cp-1.0.0 web-1.0.0.bundle
run_push registry-2.0.0 "$REF" --insecure
log "done"
