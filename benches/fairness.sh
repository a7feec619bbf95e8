#!/usr/bin/env bash
# Tenant fairness (issue 14: "one tenant must not starve the others"), measured side by side in
# one run on whatever machine this is; compare the ratios, not absolute numbers across runs.
#
#   bash benches/fairness.sh [SECONDS]      (default 8 s per measurement; a full run takes ~8 min)
#
# The daemon is $OUTPOST, else a `cargo build --release --locked` of this tree. Raw outputs (wrk,
# h2load, metrics, daemon logs) stay in a temp directory printed at the start; the markdown summary
# goes to stdout, progress to stderr. Everything listens on 127.0.0.1, ports picked by the kernel.
# Nothing here asserts on timing: targets are printed beside the figures.
#
# 1. Neighbour table: tenant A (hello, a.test) under `wrk -t1 -c16` (saturating) and `-c4`
#    (closed loop) while B (slow, timeout 2s) or C (memhog, memory_limit 32MiB) misbehave:
#    nothing / 1 /spin / 8 /spin / 8 /grow/30 / 8 /sleep/1000, each neighbour slot re-issued as soon
#    as it returns (one wrk with that many connections), then "nothing" again to show drift; every
#    condition measured once per round, $ROUNDS rounds. Target, beside 8 spinners and beside 8
#    /grow/30: A's -c4 req/s >= 50 % of alone and p99 <= 3x alone.
# 2. K = 4 equal tenants (the hello wasm as t1..t4.test), one `wrk -t1 -c8` each, in parallel:
#    each tenant's share of requests served (target 25 % +- 5) and of guest CPU
#    (outpost_guest_cpu_seconds_total, "n/a" when the daemon does not export it). Then unequal
#    connection counts (-c16, -c2, -c2, -c2), informative only.
# 3. Density at default settings: N concurrent `/sleep/<ms>` on slow over h2c (h2load, 100
#    streams per connection) for N = 100 (under today's limits), 1k, 2k, 5k, 10k, 15k; once they
#    are in flight, daemon RSS, live instances (outpost_pool_slots_used), requests in flight, 503s,
#    and how many instances would fit in 1 GiB of RSS at the measured cost per instance.
# 4. `outpost info` inside a 1 GiB and a 4 GiB memory cgroup (v1, else systemd-run, else skipped).
# 5. Single-tenant throughput vs `wasmtime serve` is benches/load.sh; only a pointer here.
#
# Knobs (environment): OUTPOST, SCENARIOS="1 2 3 4" (a subset runs only those), ROUNDS=3 (of the
# neighbour table; medians are reported, since on a small shared VM one round's p99 is noise),
# DENSITY_STEPS="100 1000 2000 5000 10000 15000", DENSITY_SLEEP_MS=20000.
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-8}
DENSITY_STEPS=${DENSITY_STEPS:-"100 1000 2000 5000 10000 15000"}
DENSITY_SLEEP_MS=${DENSITY_SLEEP_MS:-20000}
SCENARIOS=${SCENARIOS:-"1 2 3 4"}
ROUNDS=${ROUNDS:-3}

for tool in wrk h2load curl; do
  command -v "$tool" >/dev/null || { echo "$tool missing: apt-get install -y wrk nghttp2-client curl" >&2; exit 1; }
done
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${OUTPOST:-}" ]; then
  cargo build --release --locked --bin outpost >&2
  OUTPOST="$TARGET_DIR/release/outpost"
fi
OUTPOST=$(realpath "$OUTPOST")
APPS_DIR="$TARGET_DIR/testbed-apps/wasm32-wasip2/release"
for w in hello slow memhog; do
  [ -f "$APPS_DIR/$w.wasm" ] || { echo "$APPS_DIR/$w.wasm missing (built by build.rs with the binary)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/outpost-fairness.XXXXXX)
DAEMON=            # pid of the running daemon
GROUPS_=()         # process groups of neighbour loops (setsid), killed as groups
PIDS=()            # other background processes (wrk, h2load)
CGROUPS=()         # cgroup directories to remove
cleanup() {
  for g in "${GROUPS_[@]}"; do kill -- "-$g" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null || true
  for c in "${CGROUPS[@]}"; do rmdir "$c" 2>/dev/null || true; done
}
trap cleanup EXIT
log() { echo "[fairness] $*" >&2; }
log "raw outputs in $WORK"

# === the daemon ===

# app_dir DIR NAME WASM [component lines...]: an app directory with one component at "/".
app_dir() {
  local dir=$1 name=$2 wasm=$3; shift 3
  mkdir -p "$dir"
  cp "$APPS_DIR/$wasm.wasm" "$dir/"
  { printf 'manifest_version = 1\n[application]\nname = "%s"\nversion = "1.0.0"\n' "$name"
    printf '[component.main]\nsource = "%s.wasm"\nroutes = ["/"]\n' "$wasm"
    for line in "$@"; do echo "$line"; done; } >"$dir/outpost.toml"
}

# start_daemon NAME CONFIG_BODY: writes $WORK/NAME.toml (listen + state dir + CONFIG_BODY), runs
# `outpost run` on it, waits for its listeners; sets URL (tenant) and ADMIN (admin listener).
start_daemon() {
  local name=$1 body=$2 cfg="$WORK/$1.toml"
  { printf '[node]\nstate_dir = "%s"\n' "$WORK/$name-state"
    printf '[listen]\nhttp = ["127.0.0.1:0"]\nadmin = "127.0.0.1:0"\n\n%s\n' "$body"; } >"$cfg"
  "$OUTPOST" --log-level warn run --config "$cfg" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  DAEMON=$!
  URL= ADMIN=
  for _ in $(seq 1 600); do
    URL=$(grep -oE '^listening on http://127\.0\.0\.1:[0-9]+' "$WORK/$name.out" | head -1 | sed 's/^listening on //' || true)
    ADMIN=$(grep -oE '^admin listening on http://127\.0\.0\.1:[0-9]+' "$WORK/$name.out" | head -1 | sed 's/^admin listening on //' || true)
    [ -n "$URL" ] && [ -n "$ADMIN" ] && return 0
    kill -0 "$DAEMON" 2>/dev/null || break
    sleep 0.1
  done
  echo "daemon $name did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1
}

stop_daemon() {
  kill "$DAEMON" 2>/dev/null || true
  wait "$DAEMON" 2>/dev/null || true
  DAEMON=
}

# metric NAME [APP]: the sum of NAME's samples (those labelled app="APP" if given) on /metrics;
# empty when the daemon exports no such metric.
metrics() { curl -s --max-time 5 "$ADMIN/metrics" || true; }
# metric_in FILE NAME [APP]: the same for a saved /metrics page ("-" = stdin).
metric_in() {
  local file=$1 name=$2 app=${3:-}
  awk -v n="$name" -v a="app=\"$app\"" '
    index($0, n) == 1 && (substr($0, length(n) + 1, 1) == "{" || substr($0, length(n) + 1, 1) == " ") \
      && (a == "app=\"\"" || index($0, a) > 0) { s += $NF; found = 1 }
    END { if (found) printf "%.6f\n", s }' "$file"
}
metric() { metrics | metric_in - "$@"; }
int_metric() { local v; v=$(metric "$@"); printf '%.0f' "${v:-0}"; }

# wait_until SECONDS CMD...: polls CMD every 0.1 s until it succeeds; 1 on timeout.
wait_until() {
  local limit=$1; shift
  local deadline=$((SECONDS + limit))
  until "$@"; do [ "$SECONDS" -ge "$deadline" ] && return 1; sleep 0.1; done
}
inflight_at_least() { [ "$(int_metric outpost_requests_inflight "$1")" -ge "$2" ]; }
inflight_none() { [ "$(int_metric outpost_requests_inflight)" -eq 0 ]; }

# === wrk output ===

# wrk prints latencies like 812.00us, 1.23ms, 2.01s: in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} else print ""}'; }
wrk_rps() { awk '/Requests\/sec/ {print $2}' "$1"; }
wrk_total() { awk '/requests in/ {print $1}' "$1"; }
wrk_pct() { awk -v p="$2" '$1 == p {print $2}' "$1" | to_us; }
wrk_timeouts() { awk '/Socket errors/ {print $NF}' "$1" | grep -oE '[0-9]+' || echo 0; }
wrk_non2xx() { awk '/Non-2xx/ {print $NF}' "$1"; }
fmt_ms() { [ -n "$1" ] && awk -v u="$1" 'BEGIN { if (u >= 1000000) printf "%.2f s", u / 1e6; else printf "%.2f ms", u / 1000 }' || echo "—"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "" || b == "" || b + 0 == 0) print "—"; else printf "%.2fx", a / b }'; }

# === 1. neighbour table ===

# neighbours LABEL N PATH HOST: N connections re-issuing PATH on HOST as soon as each returns, from
# one wrk process (summary in $WORK/n-LABEL.txt), in a process group recorded for cleanup. One wrk
# and not N curl loops: a curl process per request costs ~3-4 ms of CPU to start, and on a 2-core
# machine those processes took the CPU from the tenant being measured (profiled with perf sched).
neighbours() {
  local label=$1 n=$2 path=$3 host=$4
  setsid wrk -t1 -c"$n" -d1h --timeout 60s -H "Host: $host" "$URL$path" >"$WORK/n-$label.txt" 2>&1 &
  GROUPS_+=($!)
}
stop_neighbours() {
  local g=${GROUPS_[-1]}
  # SIGINT: wrk stops and prints its summary.
  kill -INT -- "-$g" 2>/dev/null || true
  wait "$g" 2>/dev/null || true
  unset 'GROUPS_[-1]'
}
# "1234 responses, 12 non-2xx" from the neighbours' wrk summary.
neighbour_codes() {
  local f="$WORK/n-$1.txt"
  printf '%s responses, %s non-2xx' "$(wrk_total "$f" | grep . || echo 0)" "$(wrk_non2xx "$f" | grep . || echo 0)"
}

# median of the numbers on stdin (one per line); empty if none.
median() { sort -g | awk '{v[NR] = $1} END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

scenario_neighbours() {
  log "1. neighbour table: ${SECS} s per measurement, $ROUNDS rounds"
  app_dir "$WORK/apps/a" hello hello
  app_dir "$WORK/apps/b" slow slow 'timeout = "2s"'
  app_dir "$WORK/apps/c" memhog memhog 'memory_limit = "32MiB"'
  start_daemon neighbours "$(printf '[[app]]\nsource = "%s"\nhosts = ["%s"]\n\n' \
    "$WORK/apps/a" a.test "$WORK/apps/b" b.test "$WORK/apps/c" c.test)"
  local body; body=$(curl -fsS -H 'Host: a.test' "$URL/")
  [ "$body" = "hello from outpost" ] || { echo "a.test answered '$body'" >&2; exit 1; }
  wrk -t1 -c16 -d2s -H 'Host: a.test' "$URL/" >/dev/null  # warm-up

  # label | neighbour count | path | host | app whose in-flight count shows the neighbours started
  local conditions=(
    "nothing|0|||"
    "1 × /spin on B|1|/spin|b.test|slow"
    "8 × /spin on B|8|/spin|b.test|slow"
    "8 × /grow/30 on C|8|/grow/30|c.test|memhog"
    "8 × /sleep/1000 on B|8|/sleep/1000|b.test|slow"
    "nothing, again (drift)|0|||"
  )
  local i round
  for round in $(seq 1 "$ROUNDS"); do
    i=0
    for cond in "${conditions[@]}"; do
      IFS='|' read -r label n path host app <<<"$cond"
      i=$((i + 1))
      local note=""
      if [ "$n" -gt 0 ]; then
        neighbours "$round-$i" "$n" "$path" "$host"
        # Spinners and sleepers stay in flight; /grow/30 comes and goes, so one in flight will do.
        local want=$n; [ "$app" = memhog ] && want=1
        wait_until 10 inflight_at_least "$app" "$want" || note="only $(int_metric outpost_requests_inflight "$app") of $want in flight at start"
      fi
      for c in 4 16; do
        log "  round $round, $label: wrk -c$c"
        local inflight_mid
        wrk -t1 -c$c -d"${SECS}s" --latency -H 'Host: a.test' "$URL/" >"$WORK/wrk-$round-$i-c$c.txt" &
        PIDS+=($!)
        sleep "$(awk -v s="$SECS" 'BEGIN {print s / 2}')"
        inflight_mid=$([ -n "$app" ] && int_metric outpost_requests_inflight "$app" || echo —)
        wait "${PIDS[-1]}"; unset 'PIDS[-1]'
        echo "$inflight_mid" >"$WORK/inflight-$round-$i-c$c.txt"
      done
      if [ "$n" -gt 0 ]; then
        stop_neighbours
        wait_until 10 inflight_none || log "  neighbours still in flight 10 s after they were stopped"
        echo "round $round, $label: neighbour $(neighbour_codes "$round-$i")${note:+; $note}" >>"$WORK/neighbour-notes.txt"
      fi
    done
  done
  stop_daemon

  echo "### 1. Tenant A (hello) beside a misbehaving neighbour"
  echo
  echo "\`wrk -t1 -cN -d${SECS}s --latency -H 'Host: a.test'\`; neighbours: one \`wrk -t1 -c<count>\` re-issuing"
  echo "as they return; B = slow (\`timeout = \"2s\"\`), C = memhog (\`memory_limit = \"32MiB\"\`). $ROUNDS rounds,"
  echo "each measuring every condition in turn; figures are medians over rounds, and \"vs alone\" is the"
  echo "median of each round's ratio to that round's \"nothing\" (per-round ratios in brackets). \"in"
  echo "flight\" = the neighbour's \`outpost_requests_inflight\` half-way through (median). Target beside"
  echo "8 × /spin and 8 × /grow/30: -c4 req/s ≥ 0.50x alone and p99 ≤ 3x alone. Timeouts: wrk's (no"
  echo "answer within 2 s; not in the percentiles), summed over rounds."
  echo
  echo "| neighbour | wrk | A req/s | vs alone | p50 | p99 | p99 vs alone | timeouts | non-2xx | neighbour in flight | target |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  i=0
  for cond in "${conditions[@]}"; do
    IFS='|' read -r label n path host app <<<"$cond"
    i=$((i + 1))
    for c in 4 16; do
      local rps p50 p99 rr pr rrs prs to nx inflight target="—"
      rps=$(for r in $(seq 1 "$ROUNDS"); do wrk_rps "$WORK/wrk-$r-$i-c$c.txt"; done | median)
      p50=$(for r in $(seq 1 "$ROUNDS"); do wrk_pct "$WORK/wrk-$r-$i-c$c.txt" 50%; done | median)
      p99=$(for r in $(seq 1 "$ROUNDS"); do wrk_pct "$WORK/wrk-$r-$i-c$c.txt" 99%; done | median)
      # Per-round ratios against the same round's "nothing".
      rrs=$(for r in $(seq 1 "$ROUNDS"); do ratio "$(wrk_rps "$WORK/wrk-$r-$i-c$c.txt")" "$(wrk_rps "$WORK/wrk-$r-1-c$c.txt")"; echo; done | sed 's/x$//')
      prs=$(for r in $(seq 1 "$ROUNDS"); do ratio "$(wrk_pct "$WORK/wrk-$r-$i-c$c.txt" 99%)" "$(wrk_pct "$WORK/wrk-$r-1-c$c.txt" 99%)"; echo; done | sed 's/x$//')
      rr=$(echo "$rrs" | { grep -v '—' || true; } | median); pr=$(echo "$prs" | { grep -v '—' || true; } | median)
      to=$(for r in $(seq 1 "$ROUNDS"); do wrk_timeouts "$WORK/wrk-$r-$i-c$c.txt"; done | awk '{s += $1} END {print s + 0}')
      nx=$(for r in $(seq 1 "$ROUNDS"); do wrk_non2xx "$WORK/wrk-$r-$i-c$c.txt"; done | awk '{s += $1} END {print s + 0}')
      inflight=$(cat "$WORK"/inflight-*-"$i"-c"$c".txt | { grep -E '^[0-9]+$' || true; } | median)
      if [ "$c" = 4 ] && { [[ $label == "8 × /spin"* ]] || [[ $label == "8 × /grow"* ]]; }; then
        target=$(awk -v r="$rr" -v p="$pr" 'BEGIN { print ((r != "" && p != "" && r >= 0.5 && p <= 3) ? "met" : "**missed**") }')
      fi
      local rrl prl
      rrl=$(echo "$rrs" | paste -sd/ -); prl=$(echo "$prs" | paste -sd/ -)
      printf '| %s | -c%s | %.0f | %s (%s) | %s | %s | %s (%s) | %s | %s | %s | %s |\n' "$label" "$c" "${rps:-0}" \
        "$( [ -n "$rr" ] && printf '%.2fx' "$rr" || echo —)" "$rrl" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" \
        "$( [ -n "$pr" ] && printf '%.2fx' "$pr" || echo —)" "$prl" "$to" "$nx" "${inflight:-—}" "$target"
    done
  done
  echo
  echo "Neighbour outcomes (per round, over both wrk runs):"
  echo
  sed 's/^/- /' "$WORK/neighbour-notes.txt"
  echo
}

# === 2. K equal tenants ===

# share_run LABEL CONNS...: one wrk per tenant t1..tK in parallel; prints the share table.
share_run() {
  local label=$1; shift
  local conns=("$@") k=${#conns[@]} before="$WORK/metrics-$label-before.txt" after="$WORK/metrics-$label-after.txt"
  metrics >"$before"
  local pids=()
  for t in $(seq 1 "$k"); do
    wrk -t1 -c"${conns[$((t - 1))]}" -d"${SECS}s" -H "Host: t$t.test" "$URL/" >"$WORK/share-$label-t$t.txt" &
    pids+=($!); PIDS+=($!)
  done
  for p in "${pids[@]}"; do wait "$p"; done
  PIDS=()
  metrics >"$after"
  local total=0 cpu_total=0 have_cpu=1
  declare -A served cpu
  for t in $(seq 1 "$k"); do
    served[$t]=$(wrk_total "$WORK/share-$label-t$t.txt"); total=$((total + served[$t]))
    local b a
    b=$(metric_in "$before" outpost_guest_cpu_seconds_total "t$t")
    a=$(metric_in "$after" outpost_guest_cpu_seconds_total "t$t")
    if [ -n "$a" ]; then
      cpu[$t]=$(awk -v a="$a" -v b="${b:-0}" 'BEGIN {printf "%.6f", a - b}')
      cpu_total=$(awk -v s="$cpu_total" -v c="${cpu[$t]}" 'BEGIN {printf "%.6f", s + c}')
    else
      have_cpu=0
    fi
  done
  echo "| tenant | wrk | requests served | share | guest CPU s | CPU share |"
  echo "|---|---|---|---|---|---|"
  for t in $(seq 1 "$k"); do
    local share cpu_s="n/a" cpu_share="n/a"
    share=$(awk -v s="${served[$t]}" -v n="$total" 'BEGIN {printf "%.1f %%", n ? 100 * s / n : 0}')
    if [ "$have_cpu" = 1 ]; then
      cpu_s=$(printf '%.3f' "${cpu[$t]}")
      cpu_share=$(awk -v s="${cpu[$t]}" -v n="$cpu_total" 'BEGIN {if (n > 0) printf "%.1f %%", 100 * s / n; else print "n/a"}')
    fi
    printf '| t%s | -c%s | %s | %s | %s | %s |\n' "$t" "${conns[$((t - 1))]}" "${served[$t]}" "$share" "$cpu_s" "$cpu_share"
  done
  printf '| all | | %s (%.0f req/s) | | %s | |\n' "$total" "$(awk -v n="$total" -v s="$SECS" 'BEGIN {print n / s}')" \
    "$([ "$have_cpu" = 1 ] && printf '%.3f' "$cpu_total" || echo n/a)"
  echo
}

scenario_tenants() {
  log "2. four tenants: ${SECS} s equal, ${SECS} s unequal"
  local body=""
  for t in 1 2 3 4; do
    app_dir "$WORK/apps/t$t" "t$t" hello
    body+=$(printf '[[app]]\nsource = "%s"\nhosts = ["t%s.test"]\n\n' "$WORK/apps/t$t" "$t")$'\n'
  done
  start_daemon tenants "$body"
  for t in 1 2 3 4; do wrk -t1 -c2 -d1s -H "Host: t$t.test" "$URL/" >/dev/null; done  # warm-up
  echo "### 2. Four tenants saturating (the hello wasm four times, t1..t4.test)"
  echo
  echo "Four \`wrk -t1 -d${SECS}s\` in parallel, one per tenant. Share = that tenant's requests served /"
  echo "all served; guest CPU from \`outpost_guest_cpu_seconds_total{app}\` over the run (n/a: not exported)."
  echo "Equal connections, target 25 % ± 5 each:"
  echo
  share_run equal 8 8 8 8
  echo "Unequal connection counts (informative: a per-tenant scheduler would serve t2..t4 all they ask"
  echo "and split the rest, a per-connection one ~16:2:2:2):"
  echo
  share_run unequal 16 2 2 2
  stop_daemon
}

# === 3. density ===

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$DAEMON/status"; }
# Polls the in-flight count until it has not moved for 1 s (or h2load ended, or 60 s passed).
wait_settled() {
  local h2pid=$1 last=-1 same=0 deadline=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$deadline" ] && kill -0 "$h2pid" 2>/dev/null; do
    local now; now=$(int_metric outpost_requests_inflight slow)
    if [ "$now" -gt 0 ] && [ "$now" -eq "$last" ]; then same=$((same + 1)); [ "$same" -ge 4 ] && return 0; else same=0; fi
    last=$now
    sleep 0.25
  done
}

scenario_density() {
  log "3. density: steps $DENSITY_STEPS, /sleep/$DENSITY_SLEEP_MS each"
  app_dir "$WORK/apps/d" slow slow "timeout = \"$((DENSITY_SLEEP_MS / 1000 + 30))s\""
  # As under systemd/outpost.service, which sets it: without it mimalloc's huge pages inflate RSS.
  MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0} start_daemon density \
    "$(printf '[[app]]\nsource = "%s"\nhosts = ["*"]\n' "$WORK/apps/d")"
  curl -fsS "$URL/sleep/1" >/dev/null
  local idle; idle=$(rss_kib)
  local rows=()
  for n in $DENSITY_STEPS; do
    local c=$(((n + 99) / 100)) f="$WORK/h2load-$n.txt"
    log "  $n concurrent: h2load -n $n -c $c -m 100"
    h2load -n "$n" -c "$c" -m 100 "$URL/sleep/$DENSITY_SLEEP_MS" >"$f" 2>&1 &
    local h2=$!; PIDS+=($h2)
    wait_settled "$h2"
    local rss slots inflight
    rss=$(rss_kib); slots=$(int_metric outpost_pool_slots_used); inflight=$(int_metric outpost_requests_inflight slow)
    wait "$h2" || true; unset 'PIDS[-1]'
    local codes ok5 failed
    codes=$(awk '/^status codes:/ {print $3, $9}' "$f")  # 2xx 5xx
    failed=$(awk '/^requests:/ {for (i = 1; i < NF; i++) if ($(i + 1) ~ /^errored,?$/) print $i}' "$f")
    rows+=("$n|$slots|$inflight|$rss|${codes% *}|${codes#* }|$failed")
    wait_until 30 inflight_none || log "  requests still in flight 30 s after h2load ended"
  done
  stop_daemon
  echo "### 3. Density: concurrent instances of slow's /sleep/$DENSITY_SLEEP_MS at default settings"
  echo
  echo "\`h2load -n N -c N/100 -m 100\` (h2c), no \`[runtime]\` overrides, \`MIMALLOC_ALLOW_THP=${MIMALLOC_ALLOW_THP:-0}\` (as the systemd"
  echo "unit sets it); sampled once the in-flight count stopped moving. Idle RSS after one request: $((idle / 1024)) MiB."
  echo "Per instance = (RSS − idle) / live instances (\`outpost_pool_slots_used\`); fit in 1 GiB = (1 GiB − idle) / per instance;"
  echo "no answer = h2load's \"errored\" (reset or closed without a response)."
  echo
  echo "| asked | live instances | in flight | daemon RSS | RSS − idle | per instance | fit in 1 GiB (extrapolated) | 2xx | 5xx | no answer |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  local capped=0
  for row in "${rows[@]}"; do
    IFS='|' read -r n slots inflight rss ok fivexx failed <<<"$row"
    local per fit
    per=$(awk -v r="$rss" -v i="$idle" -v s="$slots" 'BEGIN {if (s > 0) printf "%.0f", (r - i) / s}')
    fit=$(awk -v p="$per" -v i="$idle" 'BEGIN {if (p > 0) printf "%.0f", (1048576 - i) / p; else print "—"}')
    [ "$slots" -lt "$n" ] && capped=1
    printf '| %s | %s | %s | %.1f MiB | %.1f MiB | %s | %s | %s | %s | %s |\n' "$n" "$slots" "$inflight" \
      "$(awk -v r="$rss" 'BEGIN {print r / 1024}')" "$(awk -v r="$rss" -v i="$idle" 'BEGIN {print (r - i) / 1024}')" \
      "$([ -n "$per" ] && echo "$per KiB" || echo —)" "$fit" "${ok:-?}" "${fivexx:-?}" "$failed"
  done
  echo
  if [ "$capped" = 1 ]; then
    echo "Fewer instances live than asked: the rest were refused (503) by the concurrency limits. RSS − idle then"
    echo "also holds the connections and the refused streams' buffers, so \"per instance\" is an upper bound and"
    echo "\"fit in 1 GiB\" a lower one until the limits let the instances themselves fill the memory."
    echo
  fi
}

# === 4. outpost info under memory cgroups ===

# The hardware facts and derived sizes the cgroup should move (top-level lines only).
info_lines() { grep -E '^  (memory limit|effective memory|instance_slots|default_max_concurrency|max_connections|[a-z_ ]*budget) ' || true; }

scenario_cgroups() {
  log "4. outpost info under 1 GiB and 4 GiB cgroups"
  echo "### 4. \`outpost info\` under memory cgroups"
  echo
  local v1=/sys/fs/cgroup/memory
  for size in 1G 4G; do
    echo "**memory limit $size**"
    echo
    echo '```'
    if [ -w "$v1/cgroup.procs" ] 2>/dev/null && mkdir -p "$v1/outpost-bench-${size,,}" 2>/dev/null; then
      local cg="$v1/outpost-bench-${size,,}"
      CGROUPS+=("$cg")
      echo "$size" >"$cg/memory.limit_in_bytes"
      sh -c 'echo $$ > "$1/cgroup.procs" || exit 1; exec "$2" info' info "$cg" "$OUTPOST" 2>&1 | info_lines
      rmdir "$cg" 2>/dev/null || true
    elif command -v systemd-run >/dev/null && systemd-run --scope -q -p MemoryMax="$size" true 2>/dev/null; then
      systemd-run --scope -q -p MemoryMax="$size" "$OUTPOST" info 2>&1 | info_lines
    else
      echo "skipped: no writable cgroup v1 memory controller at $v1 and systemd-run --scope failed"
    fi
    echo '```'
    echo
  done
}

# === run ===

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
START=$SECONDS
echo "## Fairness run: $(date -u +%Y-%m-%d), commit $COMMIT, $(nproc) cores $(uname -m), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "\`bash benches/fairness.sh $SECS\` with $OUTPOST; raw outputs in $WORK"
echo
for s in $SCENARIOS; do
  case $s in
    1) scenario_neighbours ;;
    2) scenario_tenants ;;
    3) scenario_density ;;
    4) scenario_cgroups ;;
    *) echo "unknown scenario $s (1-4)" >&2; exit 64 ;;
  esac
done
echo "### 5. Single-tenant throughput"
echo
echo "Hello alone (\`wrk -t1 -c32\`) against \`wasmtime serve\`: \`bash benches/load.sh\` (figures above in this file)."
echo
echo "Run took $((SECONDS - START)) s."
