#!/bin/sh
# Installs, from Debian's archive, only the host packages the kernel-matrix harness
# needs and that are missing. Idempotent and quiet when everything is present.
#   tools/vmtest/deps.sh            # harness deps (qemu, busybox, modules tooling, net tools)
#   tools/vmtest/deps.sh vagrant    # also Debian's vagrant (for `vagrant validate`)
set -eu

pkgs="qemu-system-x86 qemu-system-arm busybox-static xz-utils zstd cpio kmod binutils iproute2 nftables conntrack util-linux procps netbase"
if [ "${1:-}" = vagrant ]; then
	pkgs="vagrant"
fi

missing=""
for p in $pkgs; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" != 0 ]; then
	echo "vmtest/deps.sh: missing packages:$missing (run as root or install them)" >&2
	exit 1
fi
echo "vmtest/deps.sh: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
# Package lists may be absent on a fresh machine; refresh only if the install fails.
# shellcheck disable=SC2086
if ! apt-get install -y -q --no-install-recommends $missing >/dev/null; then
	apt-get update -q >/dev/null
	apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
