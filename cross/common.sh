# shellcheck shell=bash
# Shared helpers for the scripts in cross/: logging, installing missing Debian packages and
# locating cargo's target directory. Sourced, never executed.
#
# Owns: how the cross scripts talk to apt and where they look for build output.
# Must not: change the caller's shell options, install anything on its own when sourced, or
#           download tools from anywhere but Debian, PyPI and crates.io.

# The two targets the fleet runs. Other triples are refused rather than half-supported.
OUTPOST_CROSS_TARGETS=(x86_64-unknown-linux-musl aarch64-unknown-linux-musl)

log() { printf '[cross] %s\n' "$*" >&2; }
die() {
    printf '[cross] error: %s\n' "$*" >&2
    exit 1
}

# Debian package names are given by the caller; apt's index is refreshed at most once per run
# because a fresh image has no lists at all and `install` would find nothing.
_cross_apt_updated=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 ||
        die "need Debian package(s) '$*' but apt-get is not available; install them by hand"
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 ||
            die "need Debian package(s) '$*': run as root or install sudo"
        sudo=(sudo)
    fi
    if [ "$_cross_apt_updated" -eq 0 ]; then
        log "apt-get update"
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
            die "apt-get update failed"
        _cross_apt_updated=1
    fi
    log "apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" ||
        die "apt-get install $* failed"
}

# Install `pkg` if `cmd` is not on PATH.
ensure_cmd() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 || apt_install "$pkg"
    command -v "$cmd" >/dev/null 2>&1 || die "'$cmd' is still missing after installing '$pkg'"
}

# Cargo's target directory for the workspace in the current directory. Asking cargo (rather
# than assuming ./target) honours CARGO_TARGET_DIR and `build.target-dir` in .cargo/config.
cargo_target_dir() {
    local meta dir
    meta=$(cargo metadata --no-deps --format-version 1 2>/dev/null) ||
        die "cargo metadata failed in $(pwd); is Cargo.toml valid?"
    dir=$(printf '%s' "$meta" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
    [ -n "$dir" ] || die "cargo metadata did not report a target_directory"
    printf '%s\n' "$dir"
}

is_supported_target() {
    local t
    for t in "${OUTPOST_CROSS_TARGETS[@]}"; do
        [ "$t" = "$1" ] && return 0
    done
    return 1
}
