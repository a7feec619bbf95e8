#!/usr/bin/env bash
# cross/build.sh [--tools-only] [TARGET...] — static, stripped release builds of `outpost` for the fleet.
#
# Owns: installing the cross toolchain pieces it needs (rustup targets, zig from PyPI,
#       cargo-zigbuild from crates.io, `file` from Debian), running `cargo zigbuild --release`
#       per target, copying each binary to <target-dir>/dist/outpost-<target> and proving it is
#       a stripped, statically linked executable for the right machine.
# Must not: edit the crate, its lockfile or the caller's toolchain settings; use a C toolchain
#           other than zig's; leave a half-written binary in dist/ (copies are renamed in place).
#
# Default targets: x86_64-unknown-linux-musl aarch64-unknown-linux-musl.
# Environment: CARGO_TARGET_DIR is honoured. Tool versions are pinned below; see
# docs/cross-build.md for why these and what was measured.
set -euo pipefail

# zig 0.15.2 is the newest release cargo-zigbuild 0.24.1 special-cases (its linker-argument
# and libc handling is keyed on zig minor versions up to 0.16); it links ring's C code and
# musl statically for both targets. Pinned so a PyPI release can't change the linker under us.
ZIG_VERSION=0.15.2
ZIGBUILD_VERSION=0.24.1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/common.sh
. "$here/common.sh"
cd "$here/.."

usage() {
    cat <<EOF
usage: cross/build.sh [--tools-only] [TARGET...]

Builds stripped, statically linked release binaries of outpost with cargo-zigbuild and copies
them to <target-dir>/dist/outpost-<TARGET>. Installs missing tools itself (Debian/PyPI/crates.io).

  --tools-only  install/check the tools for TARGETs, build nothing

Targets (default: all): ${OUTPOST_CROSS_TARGETS[*]}
EOF
}

targets=()
tools_only=0
for arg in "$@"; do
    case $arg in
    -h | --help)
        usage
        exit 0
        ;;
    --tools-only) tools_only=1 ;;
    -*) die "unknown option '$arg' (see --help)" ;;
    *)
        is_supported_target "$arg" ||
            die "unsupported target '$arg'; supported: ${OUTPOST_CROSS_TARGETS[*]}"
        targets+=("$arg")
        ;;
    esac
done
[ "${#targets[@]}" -gt 0 ] || targets=("${OUTPOST_CROSS_TARGETS[@]}")

# === tools ===

ensure_rust_targets() {
    command -v rustup >/dev/null 2>&1 ||
        die "rustup is required (rust-toolchain.toml pins the toolchain and its targets)"
    # wasm32-wasip2 is needed too: build.rs compiles the embedded guest apps for it.
    local needed=("${targets[@]}" wasm32-wasip2) installed missing=() t
    # Run inside the repo so rustup resolves (and if need be installs) the pinned toolchain.
    installed=$(rustup target list --installed) || die "rustup target list failed"
    for t in "${needed[@]}"; do
        grep -qx "$t" <<<"$installed" || missing+=("$t")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        log "rustup target add ${missing[*]}"
        rustup target add "${missing[@]}" || die "rustup target add ${missing[*]} failed"
    fi
}

# Prints the zig version a Python interpreter's `ziglang` package provides, or nothing.
ziglang_version() {
    "$1" -m ziglang version 2>/dev/null || true
}

# cargo-zigbuild finds zig as `$CARGO_ZIGBUILD_PYTHON_PATH -m ziglang` before any `zig` on PATH,
# so pointing that variable at an interpreter with the pinned ziglang fixes the zig it uses.
ensure_zig() {
    local py candidates=() venv
    [ -n "${CARGO_ZIGBUILD_PYTHON_PATH:-}" ] && candidates+=("$CARGO_ZIGBUILD_PYTHON_PATH")
    command -v python3 >/dev/null 2>&1 && candidates+=("$(command -v python3)")
    venv="${XDG_CACHE_HOME:-$HOME/.cache}/outpost-cross/ziglang-$ZIG_VERSION"
    candidates+=("$venv/bin/python3")
    for py in "${candidates[@]}"; do
        if [ -x "$py" ] && [ "$(ziglang_version "$py")" = "$ZIG_VERSION" ]; then
            export CARGO_ZIGBUILD_PYTHON_PATH=$py
            log "zig $ZIG_VERSION via $py -m ziglang"
            return
        fi
    done
    # A private venv rather than `pip install --user`: Debian's python is externally managed
    # (PEP 668) and another project's zig on the same interpreter must not be replaced.
    if ! command -v python3 >/dev/null 2>&1 || ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
        apt_install python3 python3-venv
    fi
    log "installing ziglang==$ZIG_VERSION from PyPI into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    "$venv/bin/python3" -m pip install --disable-pip-version-check --quiet "ziglang==$ZIG_VERSION" ||
        die "pip install ziglang==$ZIG_VERSION failed"
    [ "$(ziglang_version "$venv/bin/python3")" = "$ZIG_VERSION" ] ||
        die "ziglang in $venv does not report zig $ZIG_VERSION"
    export CARGO_ZIGBUILD_PYTHON_PATH=$venv/bin/python3
}

ensure_zigbuild() {
    local have
    have=$(cargo-zigbuild --version 2>/dev/null || true)
    if [ "$have" != "cargo-zigbuild $ZIGBUILD_VERSION" ]; then
        log "cargo install cargo-zigbuild@$ZIGBUILD_VERSION --locked (found: ${have:-none})"
        cargo install "cargo-zigbuild@$ZIGBUILD_VERSION" --locked ||
            die "cargo install cargo-zigbuild@$ZIGBUILD_VERSION failed"
    fi
    have=$(cargo-zigbuild --version 2>/dev/null || true)
    [ "$have" = "cargo-zigbuild $ZIGBUILD_VERSION" ] ||
        die "cargo-zigbuild on PATH reports '${have:-nothing}', want $ZIGBUILD_VERSION; is ~/.cargo/bin on PATH?"
}

ensure_cmd file file
ensure_rust_targets
ensure_zig
ensure_zigbuild
if [ "$tools_only" -eq 1 ]; then
    log "tools ready for ${targets[*]}"
    exit 0
fi

# === build ===

# What `file` calls each target's machine; a host binary copied by mistake must not pass.
machine_of() {
    case $1 in
    x86_64-*) echo "x86-64" ;;
    aarch64-*) echo "ARM aarch64" ;;
    *) die "no machine name known for $1" ;;
    esac
}

# Fails unless `file` says the binary is a stripped static executable for the target's machine.
check_binary() {
    local bin=$1 target=$2 desc machine
    desc=$(file -b "$bin") || die "file $bin failed"
    machine=$(machine_of "$target")
    case $desc in *"statically linked"*) ;; *) die "$bin is not statically linked: $desc" ;; esac
    case $desc in *"$machine"*) ;; *) die "$bin is not an $machine executable: $desc" ;; esac
    case $desc in *"not stripped"* | *"with debug_info"*) die "$bin is not stripped: $desc" ;; esac
    case $desc in *", stripped"*) ;; *) die "$bin is not stripped: $desc" ;; esac
}

target_dir=$(cargo_target_dir)
dist="$target_dir/dist"
mkdir -p "$dist"

summary=()
for target in "${targets[@]}"; do
    log "building outpost for $target"
    start=$SECONDS
    # --locked: a release artifact is built from the committed lockfile, never a re-resolved one.
    # --config strip=true: the dist binaries are stripped whatever the release profile says.
    cargo zigbuild --release --locked --target "$target" --package outpost --bin outpost \
        --config 'profile.release.strip=true' ||
        die "cargo zigbuild --release --target $target failed"
    took=$((SECONDS - start))

    built="$target_dir/$target/release/outpost"
    out="$dist/outpost-$target"
    [ -f "$built" ] || die "build reported success but $built does not exist"
    cp "$built" "$out.tmp"
    mv -f "$out.tmp" "$out"
    check_binary "$out" "$target"
    (cd "$dist" && sha256sum "outpost-$target" >"outpost-$target.sha256")

    size=$(stat -c %s "$out")
    desc=$(file -b "$out")
    log "$out: $size bytes ($(numfmt --to=iec-i --suffix=B "$size")), built in ${took}s"
    log "  $desc"
    summary+=("$(printf '%-28s %10s bytes  %9s  %5ss' "$target" "$size" \
        "$(numfmt --to=iec-i --suffix=B "$size")" "$took")")
done

echo "static binaries in $dist:"
printf '  %s\n' "${summary[@]}"
