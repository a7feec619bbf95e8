#!/usr/bin/env bash
# systemd/verify.sh [OUTPOST_BINARY] — `systemd-analyze verify` of outpost.service and
# outpost.socket, and their `systemd-analyze security` score, without a running systemd.
#
# Owns: a scratch root holding the units, the host's unit library (targets the units refer to)
# and the binary at the ExecStart= path, so verify checks what it would on a real install.
# Must not: install anything into the host's /etc or /usr, or need root (except apt-get when
#           systemd-analyze is missing).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v systemd-analyze >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq systemd
fi
bin=${1:-${CARGO_TARGET_DIR:-target}/debug/outpost}
[ -x "$bin" ] || { echo "verify.sh: $bin is not an executable (build first or pass a path)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/usr/bin"
cp -a /lib/systemd/system "$root/usr/lib/systemd/"
cp systemd/outpost.service systemd/outpost.socket "$root/etc/systemd/system/"
cp "$bin" "$root/usr/bin/outpost"
# ExecReload= runs /bin/kill; the scratch root needs it to exist (a usrmerged /bin -> usr/bin).
cp "$(type -P kill)" "$root/usr/bin/kill"
ln -s usr/bin "$root/bin"
# Run from the scratch root so no unit of the current directory is picked up.
(cd "$root" && systemd-analyze verify --root="$root" outpost.service outpost.socket)
echo "systemd-analyze verify: outpost.service and outpost.socket OK"
systemd-analyze security --offline=yes systemd/outpost.service | tail -n 1
