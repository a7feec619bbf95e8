#!/usr/bin/env bash
# An emulated Raspberry-Pi-class gateway: an arm64 Debian (bookworm) root built from Debian's
# packages, with Outpost's arm64 .deb installed by dpkg, booted under qemu-system-aarch64 (virt,
# cortex-a72, TCG) with systemd as PID 1; a control plane on the host; the gateway enrols,
# receives a signed bundle of the hello app by `outpost push` and answers through a forwarded port.
#
#   bash testbed/gateway.sh [--deb PATH] [--outpost PATH] [--apps DIR] [--work DIR]
#                           [--fleet N] [--waves P,P,..] [--bake DUR] [--poll DUR]
#                           [--smp N] [--mem MIB] [--mirror URL] [--boot-timeout S]
#                           [--push-timeout S] [--rebuild-root] [--root-only] [--pi-sizing]
#
#   --deb PATH       arm64 package (default target/dist/outpost_<version>_arm64.deb, made by
#                    `bash cross/build.sh && bash cross/deb.sh arm64`)
#   --outpost PATH   host binary for the control plane and operator CLI (default target/release/outpost)
#   --apps DIR       directory with hello.wasm (default target/testbed-apps/wasm32-wasip2/release)
#   --work DIR       cache and run directory (default target/testbed/gateway; see testbed/README.md)
#   --fleet N        also run N host nodes (like testbed/fleet.sh) against the same control plane;
#                    the push then goes to all N+1 nodes in waves (default waves 10,50,100)
#   --waves, --bake, --poll   rollout waves (default 100, or 10,50,100 with --fleet), bake per
#                    wave (5s), node poll interval (2s)
#   --smp, --mem     guest CPUs (2) and memory in MiB (2048)
#   --mirror URL     Debian mirror (http://deb.debian.org/debian)
#   --boot-timeout S seconds until outpost.service must answer /readyz (1200)
#   --push-timeout S seconds the push may take (1200)
#   --rebuild-root   build the cached root again even if one with the same key exists
#   --root-only      only install the tools and build (or find) the cached root, then exit
#   --pi-sizing      only print how the package's binary sizes its pools on 1, 2, 4 and 8 GB
#                    Raspberry Pis: `outpost info` under qemu-aarch64-static -R 512G (a 39-bit
#                    address space), a fake /proc/meminfo and worker_threads = 4, then exit
#
# Needs root (chroot, dpkg into the root, binfmt_misc) and Debian's apt for missing tools
# (mmdebstrap, arch-test, qemu-system-arm, qemu-user-static, e2fsprogs, curl, jq, openssl).
# Prints each phase's duration and PASS or FAIL; exits non-zero on failure. qemu, the control
# plane and the host nodes are stopped on exit; the run directory (WORK/run) is kept.
set -euo pipefail
CALLER_PWD=$PWD
cd "$(dirname "$0")/.."
REPO=$PWD

TB_NAME=gateway
# shellcheck source=testbed/lib.sh
. testbed/lib.sh # log, die, since, wait_line, make_bundle, report, op
# shellcheck source=cross/binfmt.sh
. cross/binfmt.sh # binfmt_register_aarch64

# Resolves $1 against the directory the script was started from.
abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$CALLER_PWD/$1" ;; esac; }

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n1)
TARGET=${CARGO_TARGET_DIR:-target}
case $TARGET in /*) ;; *) TARGET=$REPO/$TARGET ;; esac
DEB=$TARGET/dist/outpost_${VERSION}_arm64.deb
OUTPOST=$TARGET/release/outpost
APPS=$TARGET/testbed-apps/wasm32-wasip2/release
WORK=$TARGET/testbed/gateway
FLEET=0
WAVES=
BAKE=5s
POLL=2s
SMP=2
MEM=2048
MIRROR=http://deb.debian.org/debian
SUITE=bookworm
BOOT_TIMEOUT=1200
PUSH_TIMEOUT=1200
REBUILD=
ROOT_ONLY=
PI_SIZING=
while [ $# -gt 0 ]; do
    case $1 in
    --deb | --outpost | --apps | --work | --fleet | --waves | --bake | --poll | --smp | --mem | \
        --mirror | --boot-timeout | --push-timeout)
        [ $# -ge 2 ] || { echo "$1 needs a value (see --help)" >&2; exit 2; } ;;
    esac
    case $1 in
    --deb) DEB=$(abspath "$2"); shift 2 ;;
    --outpost) OUTPOST=$(abspath "$2"); shift 2 ;;
    --apps) APPS=$(abspath "$2"); shift 2 ;;
    --work) WORK=$(abspath "$2"); shift 2 ;;
    --fleet) FLEET=$2; shift 2 ;;
    --waves) WAVES=$2; shift 2 ;;
    --bake) BAKE=$2; shift 2 ;;
    --poll) POLL=$2; shift 2 ;;
    --smp) SMP=$2; shift 2 ;;
    --mem) MEM=$2; shift 2 ;;
    --mirror) MIRROR=$2; shift 2 ;;
    --boot-timeout) BOOT_TIMEOUT=$2; shift 2 ;;
    --push-timeout) PUSH_TIMEOUT=$2; shift 2 ;;
    --rebuild-root) REBUILD=1; shift ;;
    --root-only) ROOT_ONLY=1; shift ;;
    --pi-sizing) PI_SIZING=1; shift ;;
    -h | --help) sed -n '2,34p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
for n in FLEET SMP MEM BOOT_TIMEOUT PUSH_TIMEOUT; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--$(tr _ - <<<"${n,,}") wants a whole number, got ${!n}"
done
[ -n "$WAVES" ] || if [ "$FLEET" -gt 0 ]; then WAVES=10,50,100; else WAVES=100; fi
[ "$(id -u)" -eq 0 ] || die "needs root: chroot and dpkg into the arm64 root, binfmt_misc, mkfs -d ownership"

# --- phases, result, cleanup ---------------------------------------------------------------
PHASES=()     # "name<TAB>seconds"
PHASE=
PHASE_T0=
RUN_T0=$(date +%s.%N)
phase() { # starts phase $1 (ending the current one)
    phase_end
    PHASE=$1
    PHASE_T0=$(date +%s.%N)
    log "== $PHASE"
}
phase_end() {
    [ -n "$PHASE" ] || return 0
    PHASES+=("$PHASE	$(since "$PHASE_T0")")
    PHASE=
}
QEMU_PID=
PIDS=()
RESULT=FAIL
cleanup() {
    local rc=$? p
    set +e
    if [ -n "$PHASE" ]; then PHASES+=("$PHASE (unfinished)	$(since "$PHASE_T0")"); PHASE=; fi
    if [ -n "$QEMU_PID" ] && kill -0 "$QEMU_PID" 2>/dev/null; then
        kill "$QEMU_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$QEMU_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$QEMU_PID" 2>/dev/null
    fi
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    wait 2>/dev/null
    if [ ${#PHASES[@]} -gt 0 ]; then
        log "phase durations (seconds):"
        printf '%s\n' "${PHASES[@]}" | awk -F'\t' '{ printf "    %-52s %8s\n", $1, $2 }' >&2
        log "total: $(since "$RUN_T0") s"
    fi
    [ "$rc" -eq 0 ] || RESULT=FAIL
    if [ -z "$ROOT_ONLY$PI_SIZING" ]; then
        [ -z "${RUN:-}" ] || log "logs: $RUN (console.log, guest-journal.log, guest-info.log, outpost-journal.log, cp.log)"
        log "$RESULT"
    fi
    [ "$RESULT" = PASS ] || [ "$rc" -ne 0 ] || rc=1
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

mkdir -p "$WORK"
exec 9>"$WORK/lock"
flock -w 10 9 || die "another gateway.sh run holds $WORK/lock"

# --- tools ---------------------------------------------------------------------------------
phase "tools"
APT_UPDATED=
apt_install() {
    command -v apt-get >/dev/null || die "needs Debian package(s) $* but there is no apt-get"
    if [ -z "$APT_UPDATED" ]; then
        log "apt-get update"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >"$WORK/apt.log" 2>&1 ||
            die "apt-get update failed: $(tail -n 5 "$WORK/apt.log")"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >>"$WORK/apt.log" 2>&1 ||
        die "apt-get install $* failed: $(tail -n 5 "$WORK/apt.log")"
}
need=()
for pair in mmdebstrap:mmdebstrap qemu-system-aarch64:qemu-system-arm \
    qemu-aarch64-static:qemu-user-static mkfs.ext4:e2fsprogs curl:curl jq:jq \
    openssl:openssl flock:util-linux arch-test:arch-test; do
    command -v "${pair%%:*}" >/dev/null || need+=("${pair#*:}")
done
# mmdebstrap verifies the archive with Debian's keyring.
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
[ ${#need[@]} -eq 0 ] || apt_install "${need[@]}"

# arm64 binaries inside the root's chroot: qemu-user through binfmt_misc (cross/binfmt.sh).
binfmt_register_aarch64 "$(command -v qemu-aarch64-static)"

# --- --pi-sizing: `outpost info` as a Raspberry Pi 4/5 would print it ---------------------------
# Raspberry Pi OS kernels give user space 39 bits (512 GiB); qemu-user's -R 512G gives the
# emulated process exactly that, so the daemon's VA probe (/proc/self/maps) reads 39. MemTotal
# comes from a fake /proc/meminfo bind-mounted in a private mount namespace (the host's is not
# touched). The host has fewer than 4 CPUs, so worker_threads = 4 is set as an override; every
# other number is derived as on the board. Same numbers as docs/sizing.md's table.
# pi_info MEMINFO ARGS...: `outpost info ARGS` of the package's binary with a 512 GiB address
# space and MEMINFO as /proc/meminfo (bind-mounted in a mount namespace of its own).
pi_info() {
    # shellcheck disable=SC2016 # $1 and $@ belong to the inner sh
    unshare --mount sh -c 'mount --bind "$1" /proc/meminfo && shift && exec "$@"' sh "$1" \
        qemu-aarch64-static -R 512G "$WORK/pi-sizing/pkg/usr/bin/outpost" info "${@:2}"
}
pi_sizing() {
    local d=$WORK/pi-sizing gib
    [ -f "$DEB" ] || die "$DEB missing: bash cross/build.sh && bash cross/deb.sh arm64 (or --deb PATH)"
    rm -rf "$d"
    mkdir -p "$d"
    dpkg-deb -x "$DEB" "$d/pkg"
    printf '[listen]\nhttp = ["127.0.0.1:8080"]\n[runtime]\nworker_threads = 4\n' >"$d/four-cpus.toml"
    log "outpost info of $DEB's /usr/bin/outpost under qemu-aarch64-static -R 512G, 4 worker threads:"
    printf '| board | VA bits | worker_threads | instance_slots | max_memory_per_instance | memory_reservation | memory_guard | pool VA | default_max_concurrency | max_connections |\n'
    printf '|---|---|---|---|---|---|---|---|---|---|\n'
    for gib in 1 2 4 8; do
        printf 'MemTotal:       %d kB\nMemFree:        %d kB\nMemAvailable:   %d kB\n' \
            $((gib << 20)) $((gib << 19)) $((gib << 19)) >"$d/meminfo-$gib"
        pi_info "$d/meminfo-$gib" --config "$d/four-cpus.toml" \
            >"$d/info-${gib}g.txt" 2>&1 || die "outpost info failed: $(cat "$d/info-${gib}g.txt")"
        pi_info "$d/meminfo-$gib" --json --config "$d/four-cpus.toml" \
            >"$d/info-${gib}g.json" 2>"$d/info-${gib}g.err" || die "outpost info --json failed: $(cat "$d/info-${gib}g.err")"
        jq -r --arg board "$gib GB" '
            def hb: if . >= 1073741824 then "\((. / 1073741824 * 10 | round) / 10) GiB"
                    elif . >= 1048576 then "\((. / 1048576 * 10 | round) / 10) MiB"
                    else "\((. / 1024 * 10 | round) / 10) KiB" end;
            "| \($board) | \(.hardware.address_space.va_bits.value) | \(.worker_threads.value) | \(.instance_slots.value) | \(.max_memory_per_instance.value | hb) | \(.memory.memory_reservation.value | hb) | \(.memory.memory_guard.value | hb) | \(.memory.va_needed | hb) | \(.default_max_concurrency.value) | \(.max_connections.value) |"' \
            "$d/info-${gib}g.json"
    done
    log "full outpost info output for each board: $d/info-{1,2,4,8}g.txt"
}

if [ -n "$PI_SIZING" ]; then
    phase "pi-sizing"
    pi_sizing
    phase_end
    RESULT=PASS
    exit 0
fi

# --- the cached arm64 root -------------------------------------------------------------------
# Everything that defines the root is in ROOT_PACKAGES, prepare_root and customize_root; the
# cache key is a hash of them, the suite and the mirror, so changing any of them builds a new root.
ROOT_PACKAGES=systemd,systemd-sysv,udev,kmod,iproute2,procps,adduser,linux-image-arm64,initramfs-tools
# Runs on the host once the essential packages are in, before the rest; $1 is the root.
# mkinitramfs under qemu-user took up to 13 minutes with MODULES=most, and the kernel's postinst
# and later triggers ran it again and again, so update-initramfs is a no-op until customize_root
# runs it once.
prepare_root() {
    local r=$1
    chroot "$r" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs
    printf '#!/bin/sh\n# diverted by testbed/gateway.sh while the root is built\nexit 0\n' >"$r/usr/sbin/update-initramfs"
    chmod 0755 "$r/usr/sbin/update-initramfs"
}
# Runs on the host after the packages are installed; $1 is the root.
customize_root() {
    local r=$1
    # One initramfs, with only what QEMU's virt machine needs to mount the root (virtio-pci
    # disk, ext4); everything else loads from the root after switch_root.
    rm -f "$r/usr/sbin/update-initramfs"
    chroot "$r" dpkg-divert --quiet --local --rename --remove /usr/sbin/update-initramfs
    echo MODULES=list >"$r/etc/initramfs-tools/conf.d/testbed.conf"
    printf '%s\n' virtio_pci virtio_mmio virtio_blk ext4 crc32c_generic >>"$r/etc/initramfs-tools/modules"
    chroot "$r" update-initramfs -c -k all
    echo outpost-gateway >"$r/etc/hostname"
    printf '127.0.0.1 localhost\n127.0.1.1 outpost-gateway\n::1 localhost ip6-localhost ip6-loopback\n' >"$r/etc/hosts"
    echo 'LABEL=outpost-root / ext4 rw,noatime,errors=remount-ro 0 1' >"$r/etc/fstab"
    # QEMU's user-mode network: DHCP hands out 10.0.2.15, the host is 10.0.2.2, DNS 10.0.2.3.
    mkdir -p "$r/etc/systemd/network"
    printf '[Match]\nName=en* eth*\n\n[Network]\nDHCP=ipv4\n' >"$r/etc/systemd/network/10-wired.network"
    echo 'nameserver 10.0.2.3' >"$r/etc/resolv.conf"
    chroot "$r" systemctl enable systemd-networkd.service systemd-networkd-wait-online.service
    # Volatile journal (no /var/log/journal): the image is thrown away after each run.
    mkdir -p "$r/etc/systemd/journald.conf.d"
    printf '[Journal]\nStorage=volatile\n' >"$r/etc/systemd/journald.conf.d/testbed.conf"
    # A console login prompt would only clutter console.log; nobody types into it.
    chroot "$r" systemctl mask serial-getty@ttyAMA0.service getty@tty1.service
    ls "$r"/boot/vmlinuz-* "$r"/boot/initrd.img-* >/dev/null
}
ROOT_KEY=$({
    echo "$SUITE $MIRROR arm64 $ROOT_PACKAGES"
    declare -f prepare_root customize_root
} | sha256sum | cut -c1-12)
ROOT=$WORK/root-$SUITE-arm64-$ROOT_KEY

build_root() {
    local tmp=$ROOT.tmp
    rm -rf "$tmp"
    log "building an arm64 $SUITE root in $tmp from $MIRROR (packages: $ROOT_PACKAGES)"
    log "(maintainer scripts and mkinitramfs run under qemu-user: expect 10-15 minutes; log: $WORK/root-build.log)"
    # mmdebstrap runs the hook with sh -c and the root as $1: hand it the function as a script.
    for f in prepare_root customize_root; do
        { echo 'set -euo pipefail'; declare -f $f; echo "$f \"\$1\""; } >"$WORK/$f.sh"
    done
    mmdebstrap --mode=root --architectures=arm64 --variant=minbase \
        --include="$ROOT_PACKAGES" \
        --aptopt='Acquire::Retries "3"' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/outpost/*' \
        --essential-hook="bash $(printf %q "$WORK/prepare_root.sh") \"\$1\"" \
        --customize-hook="bash $(printf %q "$WORK/customize_root.sh") \"\$1\"" \
        "$SUITE" "$tmp" "$MIRROR" >"$WORK/root-build.log" 2>&1 ||
        die "mmdebstrap failed: $(tail -n 20 "$WORK/root-build.log")"
    touch "$tmp/.outpost-testbed-root-complete"
    mv "$tmp" "$ROOT"
    log "root built: $(du -sh "$ROOT" | cut -f1)"
}

phase "root (cache $(basename "$ROOT"))"
if [ -n "$REBUILD" ] || [ ! -e "$ROOT/.outpost-testbed-root-complete" ]; then
    rm -rf "$ROOT"
    build_root
    for old in "$WORK"/root-*; do
        [ "$old" = "$ROOT" ] || [ ! -d "$old" ] || { log "removing stale cached root $old"; rm -rf "$old"; }
    done
else
    log "reusing the cached root $ROOT ($(du -sh "$ROOT" | cut -f1))"
fi
if [ -n "$ROOT_ONLY" ]; then
    phase_end
    RESULT=PASS
    exit 0
fi

# --- inputs --------------------------------------------------------------------------------
phase "inputs"
[ -f "$DEB" ] || die "$DEB missing: bash cross/build.sh && bash cross/deb.sh arm64 (or --deb PATH)"
[ -x "$OUTPOST" ] || die "$OUTPOST missing: cargo build --release (or --outpost PATH)"
[ -f "$APPS/hello.wasm" ] || die "$APPS/hello.wasm missing: any cargo build builds testbed/apps (or --apps DIR)"
deb_arch=$(dpkg-deb --field "$DEB" Architecture)
[ "$deb_arch" = arm64 ] || die "$DEB is for $deb_arch, not arm64"
log "package: $DEB ($(dpkg-deb --field "$DEB" Version), $(stat -c %s "$DEB") bytes)"
log "host CLI: $OUTPOST ($("$OUTPOST" --version))"

RUN=$WORK/run
# Processes a previous run left behind (it was killed with SIGKILL, so its trap did not run):
# each started process's pid is in run/pids, and only those still working in run/ are stopped.
if [ -f "$RUN/pids" ]; then
    while read -r p; do
        [ "$(readlink "/proc/$p/cwd" 2>/dev/null)" = "$(readlink -f "$RUN")" ] || continue
        log "stopping pid $p left running by an earlier run ($(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-60))"
        kill "$p" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done <"$RUN/pids"
fi
rm -rf "$RUN"
mkdir -p "$RUN"
cd "$RUN"
# started PID: remembers a background process for cleanup (and for the next run, see above).
started() { PIDS+=("$1"); echo "$1" >>"$RUN/pids"; }

# --- control plane on the host -------------------------------------------------------------
# The gateway reaches the host's 127.0.0.1 as 10.0.2.2 (QEMU user networking), which is not
# loopback from its side, so the node refuses plain http: the control plane serves TLS with a
# certificate from a throwaway CA for 10.0.2.2 and 127.0.0.1, and both the gateway
# ([control_plane] ca) and the operator commands (--ca) trust that CA.
phase "control plane"
"$OUTPOST" bundle keygen --out release >/dev/null 2>&1
"$OUTPOST" bundle keygen --out operator >/dev/null 2>&1
mkdir -p tls
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=outpost-testbed-ca -keyout tls/ca.key -out tls/ca.pem 2>tls/openssl.log
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj /CN=outpost-testbed-control-plane -keyout tls/cp.key -out tls/cp.csr 2>>tls/openssl.log
printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
    'extendedKeyUsage=serverAuth' 'subjectAltName=IP:10.0.2.2,IP:127.0.0.1' >tls/cp.ext
openssl x509 -req -in tls/cp.csr -CA tls/ca.pem -CAkey tls/ca.key -CAcreateserial -days 2 \
    -extfile tls/cp.ext -out tls/cp.crt 2>>tls/openssl.log || die "openssl: $(cat tls/openssl.log)"
cat >cp.toml <<TOML
listen = ["127.0.0.1:0"]
state_dir = "$RUN/cp"
operators = ["$RUN/operator.pub"]
[tls]
cert = "$RUN/tls/cp.crt"
key = "$RUN/tls/cp.key"
TOML
"$OUTPOST" control-plane --config cp.toml >cp.out 2>cp.log 9>&- &
started $!
CP=$(wait_line cp.out 'https://127\.0\.0\.1:[0-9]+')
CP_PORT=${CP##*:}
CP_KEY=$(wait_line cp.out 'outpost-public-key-v1 [0-9a-f]+ [A-Za-z0-9+/=]+')
export OUTPOST_CONTROL_PLANE=$CP OUTPOST_KEY=$RUN/operator.key
TB_OP_ARGS=(--ca "$RUN/tls/ca.pem")
mapfile -t TOKENS < <(op token create --count "$((FLEET + 1))" --ttl 2h 2>>cp.log)
[ "${#TOKENS[@]}" -eq "$((FLEET + 1))" ] || die "expected $((FLEET + 1)) tokens, got ${#TOKENS[@]}"
log "control plane at $CP (the gateway uses https://10.0.2.2:$CP_PORT)"

# --- the gateway's disk image ----------------------------------------------------------------
# A copy of the cached root, the .deb installed by dpkg inside it (under qemu-user), the node
# config, and an ext4 image made from the tree (mkfs.ext4 -d: no loop mount).
phase "image (copy root, dpkg -i, mkfs)"
G=$RUN/root
cp -a --reflink=auto "$ROOT" "$G"
rm -f "$G/.outpost-testbed-root-complete"
cp "$DEB" "$G/tmp/outpost.deb"
chroot "$G" dpkg -i /tmp/outpost.deb >dpkg.log 2>&1 || die "dpkg -i in the arm64 root failed: $(tail -n 20 dpkg.log)"
rm -f "$G/tmp/outpost.deb"
chroot "$G" getent passwd outpost >/dev/null || die "the package's postinst did not create the outpost user"
log "dpkg -i: $(grep -m1 'Setting up' dpkg.log || tail -n1 dpkg.log); user: $(chroot "$G" id outpost)"
log "guest binary: $(chroot "$G" /usr/bin/outpost --version)"
install -m 0644 release.pub "$G/etc/outpost/release.pub"
install -m 0644 tls/ca.pem "$G/etc/outpost/control-plane-ca.pem"
printf '%s\n' "${TOKENS[0]}" >"$G/etc/outpost/enrol.token"
chroot "$G" chown root:outpost /etc/outpost/enrol.token
chmod 0640 "$G/etc/outpost/enrol.token"
cat >"$G/etc/outpost/outpost.toml" <<TOML
# Written by testbed/gateway.sh: an emulated gateway enrolling with the host's control plane.
[node]
name = "outpost-gateway"
# state_dir unset: systemd's StateDirectory= (/var/lib/outpost).

[listen]
# Reachable only through QEMU's host forwards (user-mode networking has no inbound path).
http = ["0.0.0.0:8080"]
admin = "0.0.0.0:9090"

[trust]
keys = ["/etc/outpost/release.pub"]

[control_plane]
url = "https://10.0.2.2:$CP_PORT"
key = "$CP_KEY"
ca = "/etc/outpost/control-plane-ca.pem"
token_file = "/etc/outpost/enrol.token"
poll_interval = "$POLL"
labels = { site = "testbed", role = "gateway" }
TOML
chroot "$G" systemctl enable outpost.service >>dpkg.log 2>&1
# Testbed-only units: a report (outpost info, systemctl status) once outpost.service is up, and
# the journal of the boot, each written to its own virtio serial port, which QEMU writes to a
# file in the run directory (guest-info.log, guest-journal.log).
mkdir -p "$G/usr/local/lib/outpost-testbed"
cat >"$G/usr/local/lib/outpost-testbed/port.sh" <<'SH'
#!/bin/sh
# Waits (up to a minute) for the virtio serial port named $1; prints its path.
p=/dev/virtio-ports/${1:?port name}
i=0
while [ ! -e "$p" ] && [ $i -lt 120 ]; do sleep 0.5; i=$((i + 1)); done
echo "$p"
SH
cat >"$G/usr/local/lib/outpost-testbed/report.sh" <<'SH'
#!/bin/sh
p=$(/bin/sh /usr/local/lib/outpost-testbed/port.sh org.outpost.testbed.info)
{
    echo "== outpost info"; /usr/bin/outpost info
    echo "== outpost info --json"; /usr/bin/outpost info --json
    echo "== systemctl is-active outpost"; systemctl is-active outpost
    echo "== systemctl status outpost"; systemctl status --no-pager --lines=0 outpost
    echo "== id outpost"; id outpost
    echo "== uname -a"; uname -a
    echo "== end"
} >"$p" 2>&1
SH
cat >"$G/usr/local/lib/outpost-testbed/journal.sh" <<'SH'
#!/bin/sh
p=$(/bin/sh /usr/local/lib/outpost-testbed/port.sh org.outpost.testbed.journal)
exec journalctl -b -f -o short-unix >"$p" 2>&1
SH
cat >"$G/etc/systemd/system/outpost-testbed-report.service" <<'UNIT'
[Unit]
Description=Testbed: report outpost info and status to the host
After=outpost.service
Requires=outpost.service

[Service]
Type=oneshot
ExecStart=/bin/sh /usr/local/lib/outpost-testbed/report.sh

[Install]
WantedBy=multi-user.target
UNIT
cat >"$G/etc/systemd/system/outpost-testbed-journal.service" <<'UNIT'
[Unit]
Description=Testbed: stream the journal to the host
After=systemd-journald.service

[Service]
ExecStart=/bin/sh /usr/local/lib/outpost-testbed/journal.sh

[Install]
WantedBy=multi-user.target
UNIT
chroot "$G" systemctl enable outpost-testbed-report.service outpost-testbed-journal.service >>dpkg.log 2>&1
# Without dbus/logind, getty-static.service starts gettys on tty2..6 of a display nobody has.
chroot "$G" systemctl mask getty-static.service >>dpkg.log 2>&1
KVER=$(printf '%s\n' "$G"/boot/vmlinuz-* | sort -V | tail -n1 | sed 's|.*/vmlinuz-||')
cp "$G/boot/vmlinuz-$KVER" vmlinuz
cp "$G/boot/initrd.img-$KVER" initrd.img
size_mib=$(($(du -sm "$G" | cut -f1) + 1536))
mkfs.ext4 -q -F -L outpost-root -d "$G" disk.img "${size_mib}M" >mkfs.log 2>&1 ||
    die "mkfs.ext4 -d failed: $(cat mkfs.log)"
rm -rf "$G"
log "disk.img: ${size_mib} MiB ext4 (sparse), kernel $KVER"

# --- host nodes (--fleet N) ----------------------------------------------------------------
ADDRS=()
if [ "$FLEET" -gt 0 ]; then
    phase "host nodes ($FLEET)"
    for i in $(seq 1 "$FLEET"); do
        mkdir -p "node$i"
        sim_node_config "$RUN/node$i/state" "$RUN/release.pub" "${TOKENS[$i]}" "sim-node-$i" \
            '{ site = "testbed", role = "sim" }' "$RUN/tls/ca.pem" >"node$i/outpost.toml"
        "$OUTPOST" run -c "node$i/outpost.toml" >"node$i/out" 2>"node$i/log" 9>&- &
        started $!
    done
    for i in $(seq 1 "$FLEET"); do
        ADDRS+=("$(wait_line "node$i/out" 'http://127\.0\.0\.1:[0-9]+')")
    done
    log "$FLEET host nodes listening"
fi

# --- boot ----------------------------------------------------------------------------------
# A free TCP port on the host's loopback (best effort: nothing reserves it until QEMU binds).
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 40000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}
HTTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
[ "$ADMIN_PORT" != "$HTTP_PORT" ] || ADMIN_PORT=$(free_port)
phase "boot (until /readyz)"
: >console.log
: >guest-journal.log
: >guest-info.log
qemu-system-aarch64 -M virt -cpu cortex-a72 -smp "$SMP" -m "$MEM" -nographic -monitor none \
    -accel tcg,thread=multi \
    -kernel vmlinuz -initrd initrd.img \
    -append "root=LABEL=outpost-root rw rootwait console=ttyAMA0" \
    -drive if=none,id=hd0,file=disk.img,format=raw,cache=unsafe \
    -device virtio-blk-pci,drive=hd0 \
    -netdev "user,id=net0,hostfwd=tcp:127.0.0.1:$HTTP_PORT-:8080,hostfwd=tcp:127.0.0.1:$ADMIN_PORT-:9090" \
    -device virtio-net-pci,netdev=net0,romfile= \
    -object rng-random,id=rng0,filename=/dev/urandom -device virtio-rng-pci,rng=rng0 \
    -device virtio-serial-pci \
    -chardev file,id=tbinfo,path=guest-info.log \
    -device virtserialport,chardev=tbinfo,name=org.outpost.testbed.info \
    -chardev file,id=tbjournal,path=guest-journal.log \
    -device virtserialport,chardev=tbjournal,name=org.outpost.testbed.journal \
    -serial file:console.log \
    </dev/null >qemu.out 2>&1 9>&- &
QEMU_PID=$!
echo "$QEMU_PID" >>pids
log "qemu pid $QEMU_PID: tenant port 127.0.0.1:$HTTP_PORT -> :8080, admin 127.0.0.1:$ADMIN_PORT -> :9090; console: $RUN/console.log"
BOOT_T0=$(date +%s.%N)
# Milestones: file|pattern|what. Console ones are timed when the poll below sees them (every
# 2 s); journal ones by the journal's own timestamp (the guest's clock is the host's, through
# the virt machine's PL031 RTC), so they are exact even though the stream arrives late.
MILESTONES=(
    "console.log|Booting Linux on physical CPU|kernel started"
    "console.log|Run /init as init process|initramfs running"
    "console.log|Welcome to .*Debian|systemd (PID 1) started"
    "guest-journal.log|Started systemd-networkd-wait-online|network online"
    "guest-journal.log|Starting outpost.service|outpost.service starting (ExecStartPre: outpost run --check)"
    "guest-journal.log|outpost\\[[0-9]+\\]: .*admin listening on|outpost: listeners bound"
    "guest-journal.log|Started outpost.service|systemd: outpost.service started (READY=1)"
    "guest-journal.log|enrolled with the control plane|outpost: enrolled with the control plane"
    "guest-journal.log|release installed and loaded|outpost: pushed release installed and loaded"
)
declare -A SEEN=()
MARKS=()
check_milestones() {
    local m file pat what line t
    for m in "${MILESTONES[@]}"; do
        IFS='|' read -r file pat what <<<"$m"
        [ -z "${SEEN[$what]:-}" ] || continue
        line=$(grep -m1 -aE "$pat" "$file" 2>/dev/null) || continue
        SEEN[$what]=1
        case $file in
        guest-journal.log) t=$(awk -v a="$BOOT_T0" '{ printf "%.1f", $1 - a }' <<<"$line") ;;
        *) t=$(since "$BOOT_T0") ;;
        esac
        MARKS+=("$t s: $what")
        log "  +$t s: $what"
    done
}
ready=
deadline=$((SECONDS + BOOT_TIMEOUT))
while [ "$SECONDS" -lt "$deadline" ]; do
    check_milestones
    kill -0 "$QEMU_PID" 2>/dev/null || die "qemu exited: $(cat qemu.out; tail -n 20 console.log)"
    if grep -qE 'Kernel panic|end Kernel panic|Gave up waiting for root' console.log; then
        die "the guest kernel failed: $(grep -E -A3 'Kernel panic|Gave up' console.log | head -n 20)"
    fi
    if grep -qE 'Failed to start outpost.service|outpost.service: Failed' guest-journal.log; then
        log "outpost.service failed (systemd restarts it):"
        grep -aE 'outpost' guest-journal.log | tail -n 15 >&2
        die "outpost.service failed to start in the gateway"
    fi
    if curl -sf --max-time 3 -o readyz.out "http://127.0.0.1:$ADMIN_PORT/readyz" 2>/dev/null; then
        ready=1
        break
    fi
    sleep 2
done
check_milestones
[ -n "$ready" ] || die "the gateway's /readyz did not answer within ${BOOT_TIMEOUT}s: $(tail -n 10 console.log)"
BOOT_S=$(since "$BOOT_T0")
MARKS+=("$BOOT_S s: /readyz answers through the forwarded admin port")
log "gateway ready after $BOOT_S s: /readyz -> $(tr -d '\n' <readyz.out | head -c 200)"

# --- enrolment -----------------------------------------------------------------------------
phase "enrol"
GW_ID=
for _ in $(seq 600); do
    nodes=$(op nodes list --json 2>/dev/null) || nodes='[]'
    GW_ID=$(jq -r '[.[] | select(.name == "outpost-gateway")][0].id // empty' <<<"$nodes")
    enrolled=$(jq length <<<"$nodes")
    [ -n "$GW_ID" ] && [ "$enrolled" -ge "$((FLEET + 1))" ] && break
    sleep 0.5
done
[ -n "$GW_ID" ] || die "the gateway did not enrol: $(grep -iE 'enrol|control' guest-journal.log | tail -n 10)"
[ "$enrolled" -ge "$((FLEET + 1))" ] || die "only $enrolled of $((FLEET + 1)) nodes enrolled"
op nodes list >nodes.txt 2>&1 || true
log "enrolled: $enrolled node(s); the gateway is $GW_ID, labels $(jq -c --arg id "$GW_ID" '.[] | select(.id == $id) | .labels' <<<"$nodes")"

# --- push ----------------------------------------------------------------------------------
phase "push (until the gateway serves hello)"
make_bundle hello 1.0.0 hello
# Watches the gateway's tenant port and records when it first answers with the pushed app.
(
    t0=$(date +%s.%N)
    while :; do
        if curl -sf --max-time 60 "http://127.0.0.1:$HTTP_PORT/" 2>/dev/null | grep -q "hello from outpost"; then
            since "$t0" >gateway-active.s
            exit 0
        fi
        sleep 0.5
    done
) 9>&- &
started $!
log "pushing hello 1.0.0 to group site=testbed (waves $WAVES, bake $BAKE; the gateway compiles it under TCG)"
PUSH_T0=$(date +%s.%N)
if ! timeout "$PUSH_TIMEOUT" "$OUTPOST" push hello-1.0.0.bundle --group site=testbed \
    --waves "$WAVES" --bake "$BAKE" --max-error-rate 0.05 "${TB_OP_ARGS[@]}" >push.out 2>&1; then
    sed 's/^/    push: /' push.out >&2
    grep -E 'outpost\[' guest-journal.log | tail -n 15 >&2 || true
    die "the push did not succeed"
fi
PUSH_S=$(since "$PUSH_T0")
sed 's/^/    push: /' push.out >&2
ROLLOUT_ID=$(op rollout list --json | jq -r '[.[] | select(.app == "hello" and .version == "1.0.0")][0].id')
report "$ROLLOUT_ID" | sed 's/^/    /' >&2
op rollout status "$ROLLOUT_ID" --json >rollout.json
op nodes list --json >nodes.json
gw_wave=$(jq -r --arg id "$GW_ID" '.waves | to_entries[] | select(any(.value.nodes[]; . == $id)) | .key + 1' rollout.json)
log "the gateway was in wave $gw_wave; rollout finished in $PUSH_S s (including $BAKE bake per wave)"
jq -r '.[] | "    \(.name) (\(.labels.arch)): \([.apps[] | "\(.app) \(.version)"] | join(", "))"' nodes.json >&2

# --- check ---------------------------------------------------------------------------------
phase "check"
for _ in $(seq 120); do [ -s gateway-active.s ] && break; sleep 0.5; done
body=$(curl -sS --max-time 30 "http://127.0.0.1:$HTTP_PORT/") || die "GET through the forwarded port failed"
[ "$body" = "hello from outpost" ] || die "the gateway answered '$body', want 'hello from outpost'"
log "GET http://127.0.0.1:$HTTP_PORT/ (gateway :8080) -> '$body' (first answered $(cat gateway-active.s 2>/dev/null || echo '?') s after the push started)"
for a in "${ADDRS[@]}"; do
    curl -sf "$a/" | grep -q "hello from outpost" || die "host node $a does not serve hello 1.0.0"
done
[ "$FLEET" -eq 0 ] || log "all $FLEET host nodes serve hello 1.0.0 too"
curl -sf --max-time 30 "http://127.0.0.1:$ADMIN_PORT/metrics" >metrics.txt || die "GET /metrics failed"
log "gateway /metrics ($(grep -vc '^#' metrics.txt) samples, saved as metrics.txt):"
grep -E '^outpost_(build_info|app_release_info|pool_slots|components_loaded|sync_up|desired_state_sequence|http_requests_total)' metrics.txt |
    sed 's/^/    /' >&2
grep -q '^outpost_app_release_info{[^}]*app="hello"[^}]*version="1.0.0"' metrics.txt ||
    die "/metrics has no outpost_app_release_info for hello 1.0.0"
grep -qE '^outpost_sync_up 1$' metrics.txt || die "/metrics: outpost_sync_up is not 1"

# --- from inside the guest -------------------------------------------------------------------
phase "guest report"
for _ in $(seq 120); do grep -q '^== end' guest-info.log && break; sleep 0.5; done
if grep -q '^== end' guest-info.log; then
    log "inside the gateway (outpost-testbed-report.service, over virtio serial; all of it in guest-info.log):"
    sed -n '/^== outpost info$/,/^== outpost info --json$/p' guest-info.log | sed '$d' | sed 's/^/    /' >&2
    sed -n '/^== systemctl is-active/,/^== id outpost/p' guest-info.log | sed '$d' | sed 's/^/    /' >&2
else
    log "warning: the guest's report did not arrive (guest-info.log is empty; see console.log)"
fi
check_milestones
# The daemon's own log (from the journal stream): JSON lines from `outpost --log-format json run`,
# plain text from ExecStartPre's `outpost run --check` and the "listening on" lines on stdout.
sed -n 's/^[0-9.]* [^ ]* outpost\[[0-9]*\]: //p' guest-journal.log >outpost-journal.log
log "outpost.service log in the gateway ($(wc -l <outpost-journal.log) lines, outpost-journal.log):"
jq -rR '(fromjson? | "    \(.timestamp[11:19]) \(.level) \(.message)" +
        (del(.timestamp, .level, .message, .target, .span, .spans) | to_entries |
         map(" \(.key)=\(.value | if type == "string" then . else tojson end)") | join("")))
      // "    \(.)"' outpost-journal.log | cut -c1-200 >&2
errs=$(grep -cE '"level":"(ERROR|WARN)"|^[^{]* (ERROR|WARN) ' outpost-journal.log || true)
phase_end
log "gateway milestones (seconds since qemu started):"
printf '%s\n' "${MARKS[@]}" | sort -n | sed 's/^/    /' >&2
[ "$errs" -eq 0 ] || log "note: $errs warning/error lines in the gateway's outpost log"
RESULT=PASS
