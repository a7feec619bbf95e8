# shellcheck shell=bash
# Running arm64 binaries on another machine (cross/deb.sh --check, testbed/gateway.sh): the
# qemu-aarch64-static emulator registered with binfmt_misc with the F flag — the kernel opens the
# emulator at registration, so it runs inside a chroot, where its path does not exist. Sourced,
# never executed; the caller provides `log MESSAGE` and `die MESSAGE`.
#
# Owns: recognising an existing aarch64 registration and making one.
# Must not: install packages (the caller does, it knows its package helper), or remove a
#           registration it did not find stale under one of its own names.

AARCH64_MAGIC='7f454c460201010000000000000000000200b700'

# True when binfmt_misc has an enabled aarch64 ELF entry with the F flag.
binfmt_aarch64_ready() {
    local f
    for f in /proc/sys/fs/binfmt_misc/*; do
        case ${f##*/} in register | status) continue ;; esac
        grep -qx enabled "$f" 2>/dev/null || continue
        grep -q "^magic $AARCH64_MAGIC" "$f" 2>/dev/null || continue
        grep -q '^flags:.*F' "$f" && return 0
    done
    return 1
}

# binfmt_register_aarch64 QEMU: mounts binfmt_misc if needed and registers QEMU (an absolute path
# to qemu-aarch64-static) unless an aarch64 F-flag entry is already there. The registration is
# global and stays after the caller exits.
binfmt_register_aarch64() {
    local qemu=$1 name line
    [ -e /proc/sys/fs/binfmt_misc/register ] ||
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
        die "cannot mount binfmt_misc on /proc/sys/fs/binfmt_misc"
    binfmt_aarch64_ready && return 0
    name="qemu-aarch64"
    [ ! -e /proc/sys/fs/binfmt_misc/$name ] || name="outpost-qemu-aarch64"
    [ ! -e /proc/sys/fs/binfmt_misc/$name ] || echo -1 >/proc/sys/fs/binfmt_misc/$name
    line=":$name:M::\\x7f\\x45\\x4c\\x46\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff\\xff:$qemu:F"
    log "registering $qemu for aarch64 ELF binaries (binfmt_misc, flag F)"
    printf '%s' "$line" >/proc/sys/fs/binfmt_misc/register || die "binfmt_misc registration failed"
    binfmt_aarch64_ready || die "binfmt_misc has no enabled aarch64 entry with the F flag"
}
