# Shared by the load harnesses in benches/. Sourcing it makes WORK, a scratch directory, and PIDS,
# the background servers, and removes and kills both on exit; `compare` runs the A/B rounds.

WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT

# start NAME CMD...: runs CMD in the background, waits for a line with http://127.0.0.1:PORT on its
# stdout or stderr, and sets URL_<NAME> to that URL with a trailing slash.
start() {
  local name=$1; shift
  "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
  PIDS+=($!)
  for _ in $(seq 1 600); do
    local url
    url=$(grep -ohE 'http://127\.0\.0\.1:[0-9]+' "$WORK/$name.out" "$WORK/$name.err" 2>/dev/null | head -1 || true)
    if [ -n "$url" ]; then printf -v "URL_$name" '%s/' "${url%/}"; return 0; fi
    sleep 0.1
  done
  echo "$name did not start:" >&2; cat "$WORK/$name.err" >&2; exit 1
}

# bench_app_dir DIR WASM EXTRA: an app directory serving WASM at / (as app "bench", component "main")
# with EXTRA manifest lines for the component, e.g. "reuse = 1000".
bench_app_dir() {
  mkdir -p "$1"
  cp "$2" "$1/app.wasm"
  printf 'manifest_version = 1\n[application]\nname = "bench"\nversion = "1.0.0"\n[component.main]\nsource = "app.wasm"\nroutes = ["/"]\n%s\n' "$3" >"$1/outpost.toml"
}

# warm_up NAME: checks URL_a and URL_b answer 200, then sends each 2 s of load (caches, pools,
# lazily compiled paths), naming NAME if one does not answer.
warm_up() {
  local u
  for u in "$URL_a" "$URL_b"; do
    curl -fsS -o /dev/null "$u" || { echo "$1: $u does not answer 200" >&2; exit 1; }
    wrk -t1 -c"$CONNS" -d2s "$u" >/dev/null
  done
}

# stop_servers: kills the servers started so far, for a script that starts pairs in a loop.
stop_servers() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  PIDS=()
}

# to_us: wrk's latency ("1.23ms", "850.00us", "1.02s") in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} }'; }

# median: the middle of whitespace-separated numbers on stdin (the lower middle of an even count).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# compare LABEL_A LABEL_B: ROUNDS rounds of `wrk -t1 -c$CONNS -d${DURATION}s --latency` against
# URL_a then URL_b (the order alternating every other round, so machine noise hits both alike),
# then a table of the median req/s and p99 of each and the per-round B/A req/s ratios, whose
# median is the figure to quote.
compare() {
  local label_a=$1 label_b=$2
  declare -A RPS P99
  local RATIOS=""
  for r in $(seq 1 "$ROUNDS"); do
    local order="a b"; [ $((r % 2)) -eq 0 ] && order="b a"
    declare -A this
    for s in $order; do
      local url_var="URL_$s" out rps p99 errs
      out=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency "${!url_var}")
      rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
      p99=$(echo "$out" | awk '$1=="99%" {print $2}' | to_us)
      errs=$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)
      [ -z "$errs" ] || echo "round $r $s: $errs" >&2
      RPS[$s]+="$rps "; P99[$s]+="$p99 "; this[$s]=$rps
      echo "round $r: $s $rps req/s, p99 ${p99}us" >&2
    done
    RATIOS+="$(echo "${this[b]} / ${this[a]}" | bc -l | xargs printf '%.3f') "
  done
  echo
  echo "| server | req/s (median of $ROUNDS) | p99 latency (median) |"
  echo "|---|---|---|"
  printf '| %s | %.0f | %.0f µs |\n' "$label_a" "$(echo "${RPS[a]}" | median)" "$(echo "${P99[a]}" | median)"
  printf '| %s | %.0f | %.0f µs |\n' "$label_b" "$(echo "${RPS[b]}" | median)" "$(echo "${P99[b]}" | median)"
  echo
  echo "B/A req/s per round: ${RATIOS}(median $(echo "$RATIOS" | median)x)"
  echo "machine: $(nproc) cores, $(uname -m), wrk -t1 -c$CONNS -d${DURATION}s, $(date -u +%Y-%m-%d)"
}
