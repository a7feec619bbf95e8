# Shared by the load harnesses in benches/. Sourcing it makes WORK, a scratch directory, and PIDS,
# the background servers, and removes and kills both on exit.

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

# to_us: wrk's latency ("1.23ms", "850.00us", "1.02s") in microseconds.
to_us() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); print v} else if (v ~ /ms$/) {sub(/ms/,"",v); print v*1000} else if (v ~ /s$/) {sub(/s/,"",v); print v*1000000} }'; }

# median: the middle of whitespace-separated numbers on stdin (the lower middle of an even count).
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
