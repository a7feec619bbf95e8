#!/usr/bin/env bash
# Builds the Python and JavaScript test-bed guests (wasi:http/proxy components, WASI 0.2) into
# OUT_DIR, from the pinned toolchains in this directory:
#   componentize-py 0.25.1   requirements.txt (hash-checked)         -> OUT_DIR/toolchain/py (a venv)
#   componentize-js 0.23.0   package.json + package-lock.json (npm ci) -> OUT_DIR/toolchain/js
#
#   bash testbed/polyglot/build.sh OUT_DIR     (the tests use <cargo target dir>/testbed-polyglot)
#
# Produces OUT_DIR/{py,js}-{hello,var,fetch}.wasm. Each has a stamp beside it (`.wasm.inputs`, a
# hash of its sources, its WIT, the toolchain pins and the build recipe) and is rebuilt only when
# that hash changes: builds are not byte-reproducible, and a new .wasm would cost Outpost a fresh
# compile (~10 s per component). A toolchain is reinstalled only when its pin file changes.
# Needs the network only to install a toolchain (PyPI, the npm registry); builds run offline.
#
# Progress goes to stderr, one line per step; a tool's own output goes to OUT_DIR/logs/ and is
# printed only when the step fails. Exit 0 = every component is up to date; 2 = usage; 3 = a
# needed program is missing (the message says what to install); 1 = a step failed.
# Must not: write into the source tree (sources are staged under OUT_DIR before building), or
# leave a half-written component or toolchain that a later run would take as done.
set -euo pipefail

# Bump when a build command below changes: every component's stamp changes with it.
RECIPE=1

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
[ $# -eq 1 ] || { echo "usage: $0 OUT_DIR" >&2; exit 2; }
mkdir -p "$1"
OUT=$(cd "$1" && pwd)
LOGS=$OUT/logs
mkdir -p "$LOGS" "$OUT/stage"
# The builds use one core each at full tilt for ~10 s; they must not starve whatever else runs.
NICE=(nice -n 19)

say() { echo "polyglot: $*" >&2; }
missing() { say "error: $*"; exit 3; }
now() { echo "${EPOCHREALTIME/,/.}"; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# run LOG CMD...: runs CMD with its output in $LOGS/LOG; on failure prints that log and exits.
run() {
  local log=$LOGS/$1
  shift
  if ! "$@" >"$log" 2>&1; then
    cat "$log" >&2
    say "error: \`$*\` failed; its output is above (and in $log)"
    exit 1
  fi
}

# hash_of FILE...: one hash of the named files (paths relative to $SRC, so the checkout's
# location does not matter) and of the recipe text on stdin.
hash_of() {
  { cat; (cd "$SRC" && sha256sum -- "$@"); } | sha256sum | cut -d' ' -f1
}

# files_under DIR: the files under $SRC/DIR, sorted, relative to $SRC (no bytecode caches).
files_under() {
  (cd "$SRC" && find "$1" -type f ! -name '*.pyc' ! -path '*/node_modules/*' | LC_ALL=C sort)
}

# One build at a time per OUT_DIR (two test runs may start together).
if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUT/.lock"
  flock 9
fi

# === the tools on the machine ===

check_python() {
  command -v python3 >/dev/null 2>&1 ||
    missing "python3 not found: install Python >= 3.9 with venv and pip (Debian/Ubuntu: apt-get install python3 python3-venv)"
  python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' ||
    missing "$(python3 --version 2>&1) is too old: componentize-py needs Python >= 3.9"
  python3 -c 'import ensurepip, venv' >/dev/null 2>&1 ||
    missing "python3 cannot create a venv with pip (no ensurepip): install python3-venv (Debian/Ubuntu: apt-get install python3-venv)"
}

check_node() {
  command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
    missing "node and npm not found: install Node.js >= 20 with npm (Debian/Ubuntu: apt-get install nodejs npm, or https://nodejs.org)"
  local major
  major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] ||
    missing "node $(node --version) is too old: componentize-js 0.23.0 needs Node.js >= 20"
}

# === the toolchains, under OUT_DIR ===

# A toolchain directory counts as installed only when its `.pins` stamp (written last) matches.
PY=$OUT/toolchain/py
PY_PINS=$(hash_of requirements.txt </dev/null)
JS=$OUT/toolchain/js
JS_PINS=$(hash_of package.json package-lock.json </dev/null)

install_python() {
  [ "$(cat "$PY/.pins" 2>/dev/null)" = "$PY_PINS" ] && return
  check_python
  say "installing componentize-py (requirements.txt) into $PY"
  local t0
  t0=$(now)
  rm -rf "$PY"
  run py-venv.log python3 -m venv "$PY"
  run py-install.log env PIP_DISABLE_PIP_VERSION_CHECK=1 "${NICE[@]}" "$PY/bin/pip" install \
    --require-hashes --only-binary :all: --no-deps -r "$SRC/requirements.txt"
  echo "$PY_PINS" >"$PY/.pins"
  say "componentize-py $("$PY/bin/componentize-py" --version | awk '{ print $NF }') installed in $(since "$t0")"
}

install_js() {
  [ "$(cat "$JS/.pins" 2>/dev/null)" = "$JS_PINS" ] && return
  check_node
  say "installing componentize-js (package-lock.json, npm ci) into $JS"
  local t0
  t0=$(now)
  rm -rf "$JS"
  mkdir -p "$JS"
  cp "$SRC/package.json" "$SRC/package-lock.json" "$JS/"
  (cd "$JS" && run js-install.log "${NICE[@]}" npm ci --no-audit --no-fund --loglevel=error)
  echo "$JS_PINS" >"$JS/.pins"
  say "componentize-js installed in $(since "$t0")"
}

# === the components ===

# finish NAME TMP STAMP T0: moves a fresh build into place, then writes its stamp.
finish() {
  local name=$1 tmp=$2 stamp=$3 t0=$4
  mv -f "$tmp" "$OUT/$name.wasm"
  echo "$stamp" >"$OUT/$name.wasm.inputs"
  say "$name built in $(since "$t0") ($(stat -c %s "$OUT/$name.wasm") bytes)"
}

up_to_date() { # NAME STAMP
  [ -f "$OUT/$1.wasm" ] && [ "$(cat "$OUT/$1.wasm.inputs" 2>/dev/null)" = "$2" ]
}

# py APP WORLD: python/APP/ (module `app`) against wit-py/, world WORLD.
py() {
  local app=$1 world=$2 name=py-$1 stamp
  # shellcheck disable=SC2046 # file names without spaces, listed by files_under
  stamp=$(echo "recipe=$RECIPE py world=$world" | hash_of $(files_under "python/$app") $(files_under wit-py) requirements.txt)
  up_to_date "$name" "$stamp" && return
  install_python
  local stage=$OUT/stage/$name t0 tmp=$OUT/$name.wasm.tmp
  t0=$(now)
  rm -rf "$stage" && mkdir -p "$stage" && cp -R "$SRC/python/$app/." "$stage/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  run "$name.log" "${NICE[@]}" "$PY/bin/componentize-py" -q -d "$SRC/wit-py" -w "$world" \
    componentize app -p "$stage" -o "$tmp"
  finish "$name" "$tmp" "$stamp" "$t0"
}

# js APP WORLD: js/APP.js against wit-js/, world WORLD.
js() {
  local app=$1 world=$2 name=js-$1 stamp
  # shellcheck disable=SC2046 # file names without spaces, listed by files_under
  stamp=$(echo "recipe=$RECIPE js world=$world" | hash_of "js/$app.js" $(files_under wit-js) package.json package-lock.json)
  up_to_date "$name" "$stamp" && return
  install_js
  local stage=$OUT/stage/$name t0 tmp=$OUT/$name.wasm.tmp
  t0=$(now)
  rm -rf "$stage" && mkdir -p "$stage" && cp "$SRC/js/$app.js" "$stage/"
  # Run from the source's directory with a bare file name: componentize-js 0.23.0 mangles a
  # source path outside the working directory when the latter is a string prefix of it.
  (cd "$stage" && run "$name.log" "${NICE[@]}" "$JS/node_modules/.bin/componentize-js" "$app.js" \
    --wit "$SRC/wit-js" -n "$world" -o "$tmp")
  finish "$name" "$tmp" "$stamp" "$t0"
}

t0=$(now)
py hello http
py var http-config
py fetch http
js hello http
js var http-config
js fetch http
say "all components up to date in $OUT ($(since "$t0"))"
