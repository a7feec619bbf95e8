#!/usr/bin/env bash
# cross/deb.sh [--check] [ARCH...] — Debian packages of the static binaries from cross/build.sh.
#
# Owns: the .deb layout (/usr/bin/outpost, the systemd units under /lib/systemd/system, the
#       conffile /etc/outpost/outpost.toml, maintainer scripts creating the `outpost` system user)
#       and, with --check, proving each package really installs: `dpkg -i` inside a minimal
#       Debian root of its architecture (mmdebstrap, bookworm, Essential set + adduser or passwd)
#       with the maintainer scripts running, the installed binary running there as the `outpost`
#       user (arm64 under qemu-user through binfmt_misc), then `dpkg --purge`.
# Must not: build the binaries (cross/build.sh does), touch the host's dpkg database or accounts
#           (every dpkg, adduser/useradd and package binary runs chrooted into a scratch root),
#           leave mounts or scratch roots behind (an EXIT trap unmounts and removes them, also on
#           failure), or cache anything outside <target-dir>/testbed/deb-check.
#
# ARCH: amd64 arm64 (default both). Output: <target-dir>/dist/outpost_<version>_<arch>.deb.
# --check needs root (chroot, mounting /proc); it installs what it lacks from Debian (mmdebstrap,
# arch-test, debian-archive-keyring, qemu-user-static) and, for arm64 on another machine,
# registers qemu-aarch64-static with binfmt_misc (flag F) unless an entry is already enabled; that
# registration stays. The roots (before `dpkg -i`) are cached as tarballs keyed by everything
# that defines them in <target-dir>/testbed/deb-check/ and rebuilt when missing.
# Environment: OUTPOST_DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=cross/common.sh
. "$here/common.sh"
# shellcheck source=cross/binfmt.sh
. "$here/binfmt.sh"
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

# Scratch directories and mount points, undone by the EXIT trap whatever happens: mounts first
# (innermost last mounted, first unmounted), then the directories, but never one that still has
# something mounted below it (rm would walk into /proc).
scratch_dirs=()
mounts=()
mounted_below() {
    awk -v d="$1/" 'substr($5 "/", 1, length(d)) == d { found = 1 } END { exit !found }' /proc/self/mountinfo
}
cleanup() {
    local rc=$? i d
    set +eu
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[i]}" 2>/dev/null || umount -l "${mounts[i]}" ||
            printf '[cross] warning: could not unmount %s\n' "${mounts[i]}" >&2
    done
    for d in "${scratch_dirs[@]}"; do
        [ -e "$d" ] || continue
        if mounted_below "$d"; then
            printf '[cross] warning: %s still has mounts below it; left in place\n' "$d" >&2
        else
            rm -rf --one-file-system "$d"
        fi
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

build_deb() {
    local arch=$1 bin root deb
    bin="$dist/outpost-$(target_of "$arch")"
    [ -x "$bin" ] || die "$bin missing: run cross/build.sh first"
    root=$(mktemp -d)
    scratch_dirs+=("$root")
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
    rm -rf "$root"
    log "$deb: $(stat -c %s "$deb") bytes"
}

# --- --check: a real `dpkg -i` inside a minimal Debian root of the package's architecture ---
suite=bookworm
mirror=${OUTPOST_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What the postinst finds to create its user: arm64 gets adduser (as on Debian and Raspberry Pi OS
# installs), amd64 only passwd (the useradd fallback, as in minimal container images); between
# them both branches of the postinst and both alternatives of `Pre-Depends: adduser | passwd` run.
root_include() {
    case $1 in
    arm64) echo adduser ;;
    amd64) echo passwd ;;
    esac
}
# The Essential set only (no apt, no Priority: required extras); merged-/usr set up by mmdebstrap's
# hook, so usrmerge and the perl it pulls in are not installed; no docs (but outpost's own, which
# `dpkg --verify` then checks), man pages or locales.
MMDEBSTRAP_OPTS=(--mode=root --variant=essential --format=tar
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr
    --aptopt='Acquire::Retries "3"'
    --dpkgopt=force-unsafe-io
    --dpkgopt='path-exclude=/usr/share/man/*'
    --dpkgopt='path-exclude=/usr/share/locale/*'
    --dpkgopt='path-exclude=/usr/share/doc/*'
    --dpkgopt='path-include=/usr/share/doc/outpost/*')
# The emulator's ceiling on the address space of the arm64 binary, as in cross/smoke-aarch64.sh:
# qemu-user 7.2 keeps host memory for every guest mapping, and the pooling allocator reserves
# terabytes of it when unlimited.
QEMU_AS_LIMIT_KIB=$((64 * 1024 * 1024))

# Seconds since $1 (a `date +%s.%N` value), one decimal.
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

check_tools() {
    [ "$(id -u)" -eq 0 ] || die "--check needs root (chroot and /proc into a scratch root)"
    ensure_cmd mmdebstrap mmdebstrap
    ensure_cmd arch-test arch-test
    [ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || apt_install debian-archive-keyring
    [ -d /usr/share/mmdebstrap/hooks/merged-usr ] ||
        die "mmdebstrap has no hooks/merged-usr (needs mmdebstrap >= 0.8)"
}

# arm64 binaries on another machine: qemu-user through binfmt_misc (cross/binfmt.sh).
ensure_emulation() {
    local arch=$1 qemu
    [ "$arch" != "$(dpkg --print-architecture)" ] || return 0
    if [ "$arch" = arm64 ]; then
        command -v qemu-aarch64-static >/dev/null 2>&1 || apt_install qemu-user-static
        qemu=$(command -v qemu-aarch64-static) || die "qemu-user-static has no qemu-aarch64-static"
        binfmt_register_aarch64 "$qemu"
    fi
    local out
    out=$(arch-test "$arch" 2>&1) || die "this machine cannot run $arch binaries: $out"
}

# Sets root_tar to the cached tarball of the $1 root, building it first if it is missing. (Not
# printed: a command substitution's subshell would lose scratch_dirs and skip the EXIT trap.)
# The key covers everything that defines the root, so a change to any of it builds a new one.
root_tar=
root_tarball() {
    local arch=$1 cache key tar tmp t0
    cache="$(cargo_target_dir)/testbed/deb-check"
    key=$({
        echo "$suite $mirror $arch $(root_include "$arch")"
        declare -p MMDEBSTRAP_OPTS
    } | sha256sum | cut -c1-12)
    tar="$cache/root-$suite-$arch-$key.tar"
    root_tar=$tar
    if [ -f "$tar" ]; then
        log "$arch root: cached $tar"
        return 0
    fi
    mkdir -p "$cache"
    tmp=$(mktemp -d "$cache/build-$arch.XXXXXX")
    scratch_dirs+=("$tmp")
    log "$arch root: mmdebstrap $suite (Essential + $(root_include "$arch")) from $mirror; log: $cache/root-$arch.log"
    t0=$(date +%s.%N)
    # TMPDIR: mmdebstrap builds the root there and runs its programs; /tmp may be noexec.
    TMPDIR=$tmp timeout 1200 mmdebstrap "${MMDEBSTRAP_OPTS[@]}" --architectures="$arch" \
        --include="$(root_include "$arch")" "$suite" "$tmp/root.tar" "$mirror" \
        >"$cache/root-$arch.log" 2>&1 ||
        die "mmdebstrap of the $arch root failed: $(tail -n 20 "$cache/root-$arch.log")"
    mv "$tmp/root.tar" "$tar"
    rm -rf "$tmp"
    local old
    for old in "$cache"/root-*-"$arch"-*.tar; do
        [ "$old" = "$tar" ] || [ ! -e "$old" ] || { log "removing stale cached root $old"; rm -f "$old"; }
    done
    log "$arch root: built in $(since "$t0") s ($(du -h "$tar" | cut -f1) tarball)"
}

# in_root ROOT CMD...: CMD inside ROOT as root, with a clean environment and no stdin.
in_root() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C HOME=/root \
        DEBIAN_FRONTEND=noninteractive "$@" </dev/null
}
# as_outpost ROOT ARCH UID:GID CMD...: CMD inside ROOT as that user and group, in the environment
# outpost.service gives it (HOME and STATE_DIRECTORY /var/lib/outpost); a foreign ARCH with the
# emulator's address-space ceiling.
as_outpost() {
    local root=$1 arch=$2 ids=$3
    shift 3
    (
        [ "$arch" = "$(dpkg --print-architecture)" ] || ulimit -v "$QEMU_AS_LIMIT_KIB"
        exec timeout 300 chroot --userspec="$ids" "$root" /usr/bin/env -i PATH=/usr/bin:/bin \
            LC_ALL=C HOME=/var/lib/outpost STATE_DIRECTORY=/var/lib/outpost "$@" </dev/null
    )
}

# Installs $1's package with dpkg inside a fresh copy of its root, checks what the maintainer
# scripts and dpkg did, runs the binary as the service user, reinstalls it and purges it.
check_deb() {
    local arch=$1 deb tar work root t0 t1
    deb="$dist/outpost_${version}_${arch}.deb"
    t0=$(date +%s.%N)
    # Captured first: `cmd | grep -q` under pipefail fails when grep exits early and cmd gets SIGPIPE.
    local info contents status out conffiles pw shadow
    info=$(dpkg-deb --info "$deb") || die "$deb: dpkg-deb --info failed"
    grep -q "Architecture: $arch\$" <<<"$info" || die "$deb: wrong architecture"
    contents=$(dpkg-deb --contents "$deb") || die "$deb: dpkg-deb --contents failed"
    for f in ./usr/bin/outpost ./lib/systemd/system/outpost.service \
        ./lib/systemd/system/outpost.socket ./etc/outpost/outpost.toml; do
        grep -q " $f\$" <<<"$contents" || die "$deb: $f missing"
    done

    ensure_emulation "$arch"
    root_tarball "$arch"
    tar=$root_tar
    t1=$(date +%s.%N)
    work=$(mktemp -d "$(dirname "$tar")/check-$arch.XXXXXX")
    scratch_dirs+=("$work")
    root=$work/root
    mkdir "$root"
    tar -C "$root" -xf "$tar" || die "cannot unpack $tar"
    [ -c "$root/dev/null" ] || die "$tar: no /dev/null in the root (tar could not create device nodes?)"
    [ ! -e "$root/run/systemd/system" ] || die "$root: /run/systemd/system exists; postinst would call systemctl"
    if in_root "$root" getent passwd outpost >/dev/null; then die "$tar: already has an outpost user"; fi
    cp "$deb" "$root/tmp/outpost.deb"

    # --- install: dpkg -i with the maintainer scripts running ---
    out=$(in_root "$root" timeout 600 dpkg -i /tmp/outpost.deb 2>&1) ||
        die "$deb: dpkg -i in the $arch root failed: $out"
    status=$(in_root "$root" dpkg -s outpost) || die "$deb: dpkg -s failed after dpkg -i"
    grep -q '^Status: install ok installed$' <<<"$status" || die "$deb: not 'install ok installed': $status"
    grep -q "^Version: $version\$" <<<"$status" || die "$deb: wrong version installed: $status"
    out=$(in_root "$root" dpkg --audit 2>&1) || die "$deb: dpkg --audit failed: $out"
    [ -z "$out" ] || die "$deb: dpkg --audit complains: $out"
    # The conffile: registered, with the digest of the shipped default config.
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    conffiles=$(in_root "$root" dpkg-query -W -f='${Conffiles}\n' outpost) || die "$deb: dpkg-query failed"
    grep -q "^ /etc/outpost/outpost.toml $(md5sum <config/default.toml | cut -d' ' -f1)\$" <<<"$conffiles" ||
        die "$deb: /etc/outpost/outpost.toml is not a conffile with config/default.toml's digest: $conffiles"
    out=$(in_root "$root" dpkg --verify outpost 2>&1) || die "$deb: dpkg --verify failed: $out"
    [ -z "$out" ] || die "$deb: installed files differ from the package: $out"
    cmp -s "$root/usr/bin/outpost" "$dist/outpost-$(target_of "$arch")" ||
        die "$deb: installed binary differs from dist/"
    for f in /lib/systemd/system/outpost.service /lib/systemd/system/outpost.socket; do
        [ -f "$root$f" ] || die "$deb: $f not installed"
    done
    # The user postinst made: a system account (Debian's 100-999) with its own group, home
    # /var/lib/outpost (not created: StateDirectory= does that), no shell, no password.
    pw=$(in_root "$root" getent passwd outpost) || die "$deb: postinst created no outpost user"
    local uid gid home shell
    IFS=: read -r _ _ uid gid _ home shell <<<"$pw"
    { [ "$uid" -ge 100 ] && [ "$uid" -le 999 ]; } || die "$deb: outpost is not a system user (uid $uid): $pw"
    [ "$home" = /var/lib/outpost ] || die "$deb: outpost's home is $home, not /var/lib/outpost"
    [ "$shell" = /usr/sbin/nologin ] || die "$deb: outpost's shell is $shell, not /usr/sbin/nologin"
    out=$(in_root "$root" getent group outpost) || die "$deb: postinst created no outpost group"
    [ "$(cut -d: -f3 <<<"$out")" = "$gid" ] || die "$deb: outpost's primary group is not outpost ($pw; $out)"
    shadow=$(in_root "$root" getent shadow outpost) || die "$deb: outpost has no shadow entry"
    case $(cut -d: -f2 <<<"$shadow") in '!'* | '*'*) ;; *) die "$deb: outpost's password is not locked" ;; esac
    [ ! -e "$root/var/lib/outpost" ] || die "$deb: postinst created /var/lib/outpost (StateDirectory= owns it)"
    log "$arch: dpkg -i ok: install ok installed, conffile registered, user $pw"

    # --- the installed binary, as the service user, in the environment outpost.service gives it ---
    mount -t proc proc "$root/proc" || die "cannot mount proc in $root"
    mounts+=("$root/proc")
    # What StateDirectory=outpost with StateDirectoryMode=0700 would create.
    install -d -m 0700 -o "$uid" -g "$gid" "$root/var/lib/outpost"
    out=$(as_outpost "$root" "$arch" "$uid:$gid" /usr/bin/outpost --version 2>&1) || die "$deb: outpost --version failed: $out"
    [ "$out" = "outpost $version" ] || die "$deb: outpost --version said '$out', expected 'outpost $version'"
    out=$(as_outpost "$root" "$arch" "$uid:$gid" /usr/bin/outpost info 2>&1) || die "$deb: outpost info failed: $out"
    grep -qE "^  arch +$(case $arch in arm64) echo aarch64 ;; amd64) echo x86_64 ;; esac) " <<<"$out" ||
        die "$deb: outpost info reports the wrong arch: $out"
    # outpost.service's ExecStartPre= with the installed conffile; it writes real state.
    out=$(as_outpost "$root" "$arch" "$uid:$gid" /usr/bin/outpost run --config /etc/outpost/outpost.toml --check 2>&1) ||
        die "$deb: outpost run --check with the installed config failed: $out"
    grep -q '^config ok:' <<<"$out" || die "$deb: outpost run --check did not say 'config ok': $out"
    [ -n "$(find "$root/var/lib/outpost" -mindepth 1 -print -quit)" ] ||
        die "$deb: outpost run --check wrote no state to /var/lib/outpost"
    umount "$root/proc" || die "cannot unmount $root/proc"
    mounts=("${mounts[@]:0:${#mounts[@]}-1}")
    log "$arch: as user outpost: --version ('outpost $version'), info and run --check (config ok) ran"

    # --- reinstall (prerm/postrm upgrade, postinst with the user already there) ---
    out=$(in_root "$root" timeout 600 dpkg -i /tmp/outpost.deb 2>&1) ||
        die "$deb: second dpkg -i (reinstall) failed: $out"
    status=$(in_root "$root" dpkg -s outpost) || die "$deb: dpkg -s failed after the reinstall"
    grep -q '^Status: install ok installed$' <<<"$status" || die "$deb: not installed after the reinstall"
    [ "$(in_root "$root" getent passwd outpost)" = "$pw" ] || die "$deb: the reinstall changed the outpost user"
    [ "$(grep -c '^outpost:' "$root/etc/passwd")" -eq 1 ] || die "$deb: the reinstall added a second outpost user"

    # --- purge: files, conffile and state go; the user stays (Debian practice, see postrm) ---
    # State where systemd keeps it when a drop-in sets DynamicUser=yes (StateDirectory= then
    # lives under /var/lib/private, /var/lib/outpost being a symlink to it): purge removes it too.
    # Made beside the plain /var/lib/outpost the run above filled, so one purge checks both.
    install -d -m 0700 "$root/var/lib/private/outpost"
    echo state >"$root/var/lib/private/outpost/marker"
    out=$(in_root "$root" dpkg --purge outpost 2>&1) || die "$deb: dpkg --purge failed: $out"
    # shellcheck disable=SC2016 # a dpkg-query format, not a shell expansion
    out=$(in_root "$root" dpkg-query -W -f='${db:Status-Abbrev}' outpost 2>/dev/null || true)
    case $out in '' | 'un '* | 'pn '*) ;; *) die "$deb: still known to dpkg after --purge: '$out'" ;; esac
    for f in /usr/bin/outpost /lib/systemd/system/outpost.service /lib/systemd/system/outpost.socket \
        /etc/outpost /var/lib/outpost /var/lib/private/outpost; do
        [ ! -e "$root$f" ] || die "$deb: $f is still there after dpkg --purge"
    done
    in_root "$root" getent passwd outpost >/dev/null || die "$deb: purge removed the outpost user (postrm keeps it)"
    log "$arch: reinstall and dpkg --purge ok (/var/lib/outpost, /var/lib/private/outpost and /etc/outpost gone, user kept)"
    rm -rf --one-file-system "$work"
    log "$deb: installs, runs and purges in a $suite $arch root (root ready after $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s, dpkg -i to --purge $(since "$t1") s)"
}

[ "$check" -eq 0 ] || check_tools
for arch in "${arches[@]}"; do
    build_deb "$arch"
    [ "$check" -eq 0 ] || check_deb "$arch"
done
