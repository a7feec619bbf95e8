#!/usr/bin/env bash
# cross/deb.sh [--check] [ARCH...] — Debian packages of the static binaries from cross/build.sh.
#
# Owns: the .deb layout (/usr/bin/outpost, the systemd units under /lib/systemd/system, the
#       conffile /etc/outpost/outpost.toml, maintainer scripts creating the `outpost` system user)
#       and, with --check, proving each package installs into a scratch root of its architecture
#       without running any of its binaries.
# Must not: build the binaries (cross/build.sh does), run foreign-architecture code, or touch the
#           host's dpkg database (every dpkg call uses --root/--admindir of a scratch dir).
#
# ARCH: amd64 arm64 (default both). Output: <target-dir>/dist/outpost_<version>_<arch>.deb.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/common.sh
. "$here/common.sh"
cd "$here/.."

check=0
arches=()
for arg in "$@"; do
    case $arg in
    --check) check=1 ;;
    amd64 | arm64) arches+=("$arg") ;;
    *) die "usage: cross/deb.sh [--check] [amd64|arm64]..." ;;
    esac
done
[ "${#arches[@]}" -gt 0 ] || arches=(amd64 arm64)

ensure_cmd dpkg-deb dpkg
version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "no version in Cargo.toml"
dist="$(cargo_target_dir)/dist"

target_of() {
    case $1 in
    amd64) echo x86_64-unknown-linux-musl ;;
    arm64) echo aarch64-unknown-linux-musl ;;
    esac
}

build_deb() {
    local arch=$1 bin root deb
    bin="$dist/outpost-$(target_of "$arch")"
    [ -x "$bin" ] || die "$bin missing: run cross/build.sh first"
    root=$(mktemp -d)
    trap 'rm -rf "$root"' RETURN
    install -D -m 0755 "$bin" "$root/usr/bin/outpost"
    install -D -m 0644 systemd/outpost.service "$root/lib/systemd/system/outpost.service"
    install -D -m 0644 systemd/outpost.socket "$root/lib/systemd/system/outpost.socket"
    install -D -m 0644 config/default.toml "$root/etc/outpost/outpost.toml"
    install -D -m 0644 config/example.toml "$root/usr/share/doc/outpost/example.toml"
    install -D -m 0644 README.md "$root/usr/share/doc/outpost/README.md"
    install -D -m 0644 docs/systemd.md "$root/usr/share/doc/outpost/systemd.md"
    mkdir -p "$root/DEBIAN"
    cat >"$root/DEBIAN/control" <<CONTROL
Package: outpost
Version: $version
Architecture: $arch
Maintainer: Outpost maintainers <outpost@localhost>
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Pre-Depends: adduser | passwd
Description: edge daemon serving wasi:http WebAssembly components
 One static binary serving tenant HTTP traffic from wasi:http/proxy components
 out of wasmtime instance pools sized to the machine, run by systemd
 (outpost.service, optional outpost.socket).
CONTROL
    echo /etc/outpost/outpost.toml >"$root/DEBIAN/conffiles"
    cat >"$root/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd outpost >/dev/null; then
        if command -v adduser >/dev/null 2>&1; then
            adduser --system --group --home /var/lib/outpost --no-create-home \
                --shell /usr/sbin/nologin outpost
        else
            useradd --system --user-group --home-dir /var/lib/outpost --no-create-home \
                --shell /usr/sbin/nologin outpost
        fi
    fi
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        # Enabled, not started: the operator reviews /etc/outpost/outpost.toml first.
        systemctl enable outpost.service >/dev/null || true
    fi
fi
exit 0
SCRIPT
    cat >"$root/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop outpost.socket outpost.service >/dev/null 2>&1 || true
fi
exit 0
SCRIPT
    cat >"$root/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
if [ "$1" = purge ]; then
    # State (compiled code, installed bundles) goes with purge; the user stays, as Debian
    # policy advises (files it owned elsewhere may remain).
    rm -rf /var/lib/outpost /var/lib/private/outpost
fi
exit 0
SCRIPT
    chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm" "$root/DEBIAN/postrm"
    deb="$dist/outpost_${version}_${arch}.deb"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$deb.tmp" >/dev/null ||
        die "dpkg-deb --build failed for $arch"
    mv -f "$deb.tmp" "$deb"
    log "$deb: $(stat -c %s "$deb") bytes"
}

# Installs $1 into an empty scratch root with its own dpkg database; maintainer scripts are not
# run (they would run the root's shell, which does not exist there), so they are syntax-checked.
check_deb() {
    local arch=$1 deb scratch
    deb="$dist/outpost_${version}_${arch}.deb"
    scratch=$(mktemp -d)
    trap 'rm -rf "$scratch"' RETURN
    # Captured first: `cmd | grep -q` under pipefail fails when grep exits early and cmd gets SIGPIPE.
    local info status
    info=$(dpkg-deb --info "$deb") || die "$deb: dpkg-deb --info failed"
    grep -q "Architecture: $arch\$" <<<"$info" || die "$deb: wrong architecture"
    dpkg-deb --contents "$deb" >"$scratch/contents"
    for f in ./usr/bin/outpost ./lib/systemd/system/outpost.service \
        ./lib/systemd/system/outpost.socket ./etc/outpost/outpost.toml; do
        grep -q " $f\$" "$scratch/contents" || die "$deb: $f missing"
    done
    mkdir -p "$scratch/root/var/lib/dpkg/updates" "$scratch/root/var/lib/dpkg/info"
    touch "$scratch/root/var/lib/dpkg/status"
    dpkg --root="$scratch/root" --admindir="$scratch/root/var/lib/dpkg" \
        --force-architecture --force-not-root --force-script-chrootless --no-triggers \
        --force-depends --unpack "$deb" >/dev/null || die "$deb: dpkg --unpack into a scratch root failed"
    [ -x "$scratch/root/usr/bin/outpost" ] || die "$deb: /usr/bin/outpost not installed"
    cmp -s "$scratch/root/usr/bin/outpost" "$dist/outpost-$(target_of "$arch")" ||
        die "$deb: installed binary differs from dist/"
    status=$(dpkg --admindir="$scratch/root/var/lib/dpkg" -s outpost) || die "$deb: dpkg -s failed"
    grep -q "^Status: install ok unpacked" <<<"$status" ||
        die "$deb: not recorded as unpacked"
    grep -q "^ /etc/outpost/outpost.toml " <<<"$status" ||
        die "$deb: /etc/outpost/outpost.toml is not registered as a conffile"
    for s in postinst prerm postrm; do
        sh -n "$scratch/root/var/lib/dpkg/info/outpost.$s" || die "$deb: $s is not valid sh"
    done
    log "$deb: installs into a scratch $arch root (unpacked, conffile registered, scripts parse)"
}

for arch in "${arches[@]}"; do
    build_deb "$arch"
    [ "$check" -eq 0 ] || check_deb "$arch"
done
