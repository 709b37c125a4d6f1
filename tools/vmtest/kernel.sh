#!/bin/bash
# kernel.sh KERNEL: make sure the kernel KERNEL and its initramfs are in the cache, print
# the cache directory (the only thing written to stdout).
#
# KERNEL is a short version with an optional architecture ("6.1", "6.12", "6.12-arm64": the
# newest Debian image of that series; amd64 unless said) or a Debian image package suffix
# ("6.1.0-56-amd64", "6.12.117+deb12-amd64"). Series the host's apt sources do not serve come
# from the Debian suite that does (table below), through a private apt configuration in
# $VMTEST_CACHE/apt/SUITE-ARCH (its own sources, lists and cache: the host's apt setup is not
# changed). A foreign architecture (arm64 on an amd64 host) also takes the initramfs's
# programs and busybox from that suite's packages of that architecture.
# The cache directory, $VMTEST_CACHE/kernels/KERNEL (default <repo>/.cache/kernels/KERNEL),
# holds:
#   deb/*.deb        the downloaded linux-image package (kept to rebuild offline)
#   vmlinuz          the kernel
#   release          its `uname -r`
#   arch             its Debian architecture (amd64, arm64): vmexec picks qemu and GOARCH by it
#   package          the Debian package and version it came from
#   initramfs.cpio   busybox, iproute2/nftables/conntrack with their libraries, the
#                    modules (decompressed) with a depmod'ed modules.dep, and tools/vmtest/init
#   initramfs.files  the paths in the initramfs (vmexec adds missing test-binary libraries)
#   stamp            hash of the inputs; the initramfs is rebuilt when it changes
#
# Nothing is downloaded when the cache is complete. VMTEST_REFRESH=1 re-resolves the package
# (picks up a newer Debian kernel of the series). VMTEST_EXTRA_BINS="bpftool tcpdump" adds
# host programs (and their libraries) to the initramfs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cache=${VMTEST_CACHE:-$root/.cache}
kernel=${1:?usage: kernel.sh KERNEL (6.1, 6.12, or a package suffix like 6.1.0-56-amd64)}

log() { echo "vmtest/kernel.sh[$kernel]: $*" >&2; }
die() { log "error: $*"; exit 1; }

case $kernel in
*/* | .* | "") die "bad kernel name" ;;
esac

host_arch=$(dpkg --print-architecture)
arch=$host_arch
series=$kernel
case $kernel in
*-arm64 | *-amd64)
	arch=${kernel##*-}
	[[ $kernel =~ ^[0-9]+\.[0-9]+-(arm64|amd64)$ ]] && series=${kernel%-*}
	;;
esac

# The Debian suites serving a series that the host's apt sources (bookworm: 6.1, 6.12 for
# amd64) may not: VMTEST_SUITES="suite ..." overrides. Empty: the host's apt configuration.
suites_for() {
	case $1 in
	5.10) echo "bullseye bullseye-security" ;;
	6.12) [[ $arch == "$host_arch" ]] || echo trixie ;;
	6.16) echo trixie-backports ;;
	7.*) echo forky ;;
	esac
}
read -r -a suites <<<"${VMTEST_SUITES:-$(suites_for "$series")}"

dir=$cache/kernels/$kernel
mkdir -p "$dir"
exec 8>"$dir.lock"
flock 8

# Modules loaded at every boot, in this order (dependencies are resolved by modprobe).
# crc32c_generic first: libcrc32c (needed by nf_conntrack) only soft-depends on it.
PRELOAD=(
	virtio_pci virtio_console 9pnet_virtio 9p
	crc32c_generic nf_conntrack nf_tables nft_ct veth
	inet_diag tcp_diag udp_diag
)
# Modules shipped (with their dependencies) for tests to `modprobe` or for the kernel to
# auto-load (nft expressions, ip link types) but not loaded at boot. nft_counter is a module
# in 5.10 (built into nf_tables in 6.1): without it an nft `counter` fails with ENOENT.
EXTRA=(
	nf_conntrack_netlink nf_nat nft_nat nft_chain_nat nft_masq nft_redir
	nft_reject_inet nft_reject_ipv4 nft_reject_ipv6 nft_fib_inet nft_fib_ipv4 nft_fib_ipv6
	nft_counter nft_limit nft_log nft_quota nft_connlimit nft_numgen nft_hash nft_socket nft_queue
	nfnetlink_queue nfnetlink_log nf_log_syslog nft_compat
	raw_diag unix_diag
	sch_netem sch_htb sch_tbf sch_ingress sch_fq cls_bpf act_bpf cls_u32 act_mirred
	dummy bridge macvlan ipvlan tun
)
# Host programs copied with their shared libraries. dash is /bin/sh: Debian's busybox
# prefers its own applets inside `sh -c` (its `ip` has no netns, its setpriv no --reuid).
BINS=(dash bash ip ss tc bridge nstat nft conntrack setpriv unshare nsenter sysctl)
read -r -a extra_bins <<<"${VMTEST_EXTRA_BINS:-}"
BINS+=("${extra_bins[@]}")
if command -v bpftool >/dev/null; then BINS+=(bpftool); fi # optional: taken when the host has it

# --- apt: the host's, or a private one for another suite or architecture ------------------

apt_get=(apt-get)
apt_cache=(apt-cache)
if [[ ${#suites[@]} -gt 0 ]]; then
	adir=$cache/apt/$(
		IFS=+
		echo "${suites[*]}"
	)-$arch
	mkdir -p "$adir"/{lists/partial,archives/partial,parts}
	exec 7>"$adir.lock"
	flock 7
	: >>"$adir/status"
	for s in "${suites[@]}"; do
		uri=http://deb.debian.org/debian
		[[ $s == *-security ]] && uri=http://deb.debian.org/debian-security
		echo "deb [arch=$arch signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $uri $s main"
	done >"$adir/sources.list"
	aopts=(-o "Dir::Etc::SourceList=$adir/sources.list" -o "Dir::Etc::SourceParts=$adir/parts"
		-o "Dir::Etc::PreferencesParts=$adir/parts" -o "Dir::Etc::Preferences=$adir/none"
		-o "Dir::State::Lists=$adir/lists" -o "Dir::State::Status=$adir/status"
		-o "Dir::Cache=$adir" -o "Dir::Cache::Archives=$adir/archives"
		-o "APT::Architecture=$arch" -o "APT::Architectures=$arch"
		-o APT::Sandbox::User=root -o Acquire::Languages=none)
	apt_get=(apt-get "${aopts[@]}")
	apt_cache=(apt-cache "${aopts[@]}")
	# The index is fetched once, and again with VMTEST_REFRESH=1 (a newer kernel of the
	# series) or when a package it names is gone from the archive (download fails).
	if ! compgen -G "$adir/lists/*_Packages*" >/dev/null || [[ ${VMTEST_REFRESH:-0} == 1 ]]; then
		log "fetching the package index of ${suites[*]} ($arch)"
		"${apt_get[@]}" update -q >&2 || die "apt-get update for ${suites[*]} ($arch) failed"
	fi
fi

# --- resolve and download the package -----------------------------------------------------

resolve_pkg() {
	local k=$1 meta dep
	if [[ $k =~ ^[0-9]+\.[0-9]+$ ]]; then
		# A series: the meta package linux-image-X.Y-amd64 (e.g. 6.12 in bookworm), or
		# linux-image-amd64 when it depends on that series (6.1 in bookworm).
		for meta in "linux-image-$k-$arch" "linux-image-$arch"; do
			dep=$("${apt_cache[@]}" depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/{print $2; exit}')
			if [[ $dep == linux-image-$k.* && $dep == *-$arch ]]; then
				echo "$dep"
				return
			fi
		done
		# Otherwise the newest linux-image-X.Y*-ARCH with a candidate version.
		"${apt_cache[@]}" pkgnames "linux-image-$k" 2>/dev/null |
			grep -E "^linux-image-${k//./\\.}[-.][0-9.+a-z-]*-$arch$" |
			grep -vE -- "-(rt|cloud)-$arch$" | grep -v -- '-dbg$' | sort -V | while read -r p; do
			# (not `| grep -q`: with pipefail, apt-cache's SIGPIPE would fail the test)
			if [[ $("${apt_cache[@]}" policy "$p") == *"Candidate: "[0-9]* ]]; then echo "$p"; fi
		done | tail -n1
	else
		echo "linux-image-$k"
	fi
}

debs=("$dir"/deb/*.deb)
if [[ ! -e ${debs[0]} || ${VMTEST_REFRESH:-0} == 1 ]]; then
	pkg=$(resolve_pkg "$series")
	if [[ -z $pkg ]]; then
		log "no package known for $kernel; running apt-get update"
		"${apt_get[@]}" update -q >/dev/null
		pkg=$(resolve_pkg "$series")
	fi
	[[ -n $pkg ]] || die "no Debian linux-image package found for '$kernel' in the apt sources (${suites[*]:-of the host})"
	ver=$("${apt_cache[@]}" policy "$pkg" | awk '/Candidate:/{print $2}')
	if [[ ! -e ${debs[0]} || $(cat "$dir/package" 2>/dev/null) != "$pkg $ver" ]]; then
		log "downloading $pkg $ver"
		rm -rf "$dir/deb.tmp" && mkdir -p "$dir/deb.tmp"
		# Since 7.x (forky) the image package holds no kernel: it depends on
		# linux-binary-* (the kernel) and linux-modules-* (the modules) of the same release.
		mapfile -t parts < <("${apt_cache[@]}" depends "$pkg=$ver" 2>/dev/null |
			awk '/Depends: linux-(binary|modules)-/{print $2}' | sort -u)
		(cd "$dir/deb.tmp" && "${apt_get[@]}" download -q -o APT::Sandbox::User=root "$pkg=$ver" "${parts[@]}" >&2) ||
			die "apt-get download $pkg=$ver ${parts[*]} failed"
		rm -rf "$dir/deb" && mv "$dir/deb.tmp" "$dir/deb"
		echo "$pkg $ver" >"$dir/package"
		rm -f "$dir/stamp"
	fi
	debs=("$dir"/deb/*.deb)
fi

# --- build vmlinuz + initramfs when an input changed ----------------------------------------

stamp=$( {
	sha256sum "${debs[@]}" "$here/init" "$here/kernel.sh" | awk '{print $1}'
	echo "${BINS[*]} $arch"
	for b in "${BINS[@]}"; do command -v "$b" || echo "missing:$b"; done
	busybox 2>/dev/null | head -n1 || true
} | sha256sum | awk '{print $1}')
if [[ -f $dir/stamp && $(cat "$dir/stamp") == "$stamp" && -f $dir/vmlinuz && -f $dir/initramfs.cpio ]]; then
	echo "$dir"
	exit 0
fi

for t in busybox depmod modprobe cpio xz ldd; do
	command -v "$t" >/dev/null || die "$t not found (run tools/vmtest/deps.sh)"
done
[[ $(busybox 2>&1 | head -n1) == *BusyBox* ]] || die "busybox is not usable"
if ldd "$(command -v busybox)" >/dev/null 2>&1; then
	die "busybox must be static (apt-get install busybox-static)"
fi

# The uncompressed vmlinux inside the bzImage, booted through its PVH entry, skips the
# firmware's kernel loading and the in-guest decompression: about 2-5 s less per boot
# under TCG.
extract_vmlinux() {
	local img=$1 out=$2 magic cmd off
	for fmt in xz zstd gzip; do
		case $fmt in
		xz) magic='\xfd7zXZ\x00' cmd="xz -dcq" ;;
		zstd) magic='\x28\xb5\x2f\xfd' cmd="zstd -dcq" ;;
		gzip) magic='\x1f\x8b\x08' cmd="gzip -dcq" ;;
		esac
		command -v "${cmd%% *}" >/dev/null || continue
		for off in $(LC_ALL=C grep -obUaP "$magic" "$img" | cut -d: -f1 | head -n3); do
			tail -c +$((off + 1)) "$img" | $cmd >"$out" 2>/dev/null || true
			if [[ $(head -c4 "$out" | od -An -c | tr -d ' ') == 177ELF ]] &&
				command -v readelf >/dev/null && readelf -n "$out" 2>/dev/null | grep -q 'Xen.*0x00000012'; then
				return 0
			fi
		done
	done
	rm -f "$out"
	return 1
}

log "building vmlinuz and initramfs from $(cd "$dir/deb" && echo *.deb)"
t0=$SECONDS
work=$(mktemp -d "${TMPDIR:-/tmp}/vmtest-kernel.XXXXXX")
trap 'rm -rf "$work"' EXIT
full=$work/full
for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$full"; done
# usrmerged packages (7.x) install under usr/lib/modules
[[ -d $full/lib/modules || ! -d $full/usr/lib/modules ]] || ln -s usr/lib "$full/lib"
rel=$(ls "$full/lib/modules")
[[ -n $rel && $(wc -w <<<"$rel") == 1 ]] || die "cannot find the module directory in ${debs[*]}"
kimage=$full/boot/vmlinuz-$rel
[[ -f $kimage ]] || kimage=$full/lib/modules/$rel/vmlinuz # 7.x: linux-binary-*
[[ -f $kimage ]] || die "no boot/vmlinuz-$rel in ${debs[*]}"
depmod -b "$full" "$rel"

# Load order = first appearance in modprobe --show-depends (which includes softdeps).
resolve_mods() {
	modprobe -d "$full" -S "$rel" --show-depends -a "$@" 2>"$work/modprobe.err" |
		awk '$1=="insmod"{print $2}' | awk '!seen[$0]++'
	if [[ -s $work/modprobe.err ]]; then log "$(cat "$work/modprobe.err")"; fi
}
mapfile -t want_files < <(resolve_mods "${PRELOAD[@]}" "${EXTRA[@]}")

st=$work/stage
mkdir -p "$st"/{usr/bin,usr/sbin,usr/lib,usr/lib64,dev,proc,sys,tmp,run,etc,root,mnt,var,vmexec}
ln -s usr/bin "$st/bin"
ln -s usr/sbin "$st/sbin"
ln -s usr/lib "$st/lib"
ln -s usr/lib64 "$st/lib64"
ln -s ../run "$st/var/run"
ln -s ../tmp "$st/var/tmp"
chmod 1777 "$st/tmp"

# Modules: decompressed, with modules.dep/alias regenerated for the subset.
mdir=$st/usr/lib/modules/$rel
mkdir -p "$mdir"
cp "$full/lib/modules/$rel"/modules.{builtin,builtin.modinfo,order} "$mdir/" 2>/dev/null || true
for f in "${want_files[@]}"; do
	relpath=${f#"$full/lib/modules/$rel/"}
	relpath=${relpath%.xz}
	dst=$mdir/${relpath%.zst}
	mkdir -p "$(dirname "$dst")"
	case $f in
	*.xz) xz -dc "$f" >"$dst" ;;
	*.zst) zstd -qdc "$f" >"$dst" ;;
	*) cp "$f" "$dst" ;;
	esac
done
depmod -b "$st" "$rel"
[[ -f $mdir/modules.dep ]] || die "depmod produced no modules.dep"
printf '%s\n' "${PRELOAD[@]}" >"$st/etc/vmtest-modules"

# Host programs and their shared libraries, at their merged-/usr paths.
guestpath() { # /lib/x/y or /usr/lib/x/y -> usr/lib/x/y
	local p=$1
	case $p in
	/usr/*) echo "${p#/}" ;;
	/lib/* | /lib64/* | /bin/* | /sbin/*) echo "usr$p" ;;
	*) echo "${p#/}" ;;
	esac
}
copy_with_libs() {
	local src=$1 dst lib
	dst=$st/$(guestpath "$src")
	mkdir -p "$(dirname "$dst")"
	cp -L "$src" "$dst"
	while read -r lib; do
		[[ -n $lib && -e $lib ]] || continue
		dst=$st/$(guestpath "$lib")
		[[ -e $dst ]] && continue
		mkdir -p "$(dirname "$dst")"
		cp -L "$lib" "$dst"
	done < <(ldd "$src" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}')
}
# A foreign architecture's programs: that suite's packages (and everything they depend on)
# extracted into $work/root; their libraries found by following DT_NEEDED with readelf, as
# ldd cannot run them.
foreign_root() {
	local r=$work/root pkgs=(busybox-static dash bash iproute2 nftables conntrack util-linux procps libc6)
	mkdir -p "$r" "$adir/userland"
	mapfile -t all < <("${apt_cache[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
		--no-breaks --no-replaces --no-enhances "${pkgs[@]}" | grep -v '^ ' | grep -v '[<>]' | sort -u)
	(cd "$adir/userland" && "${apt_get[@]}" download -q "${all[@]}" >&2) || die "downloading ${all[*]} ($arch) failed"
	for f in "$adir"/userland/*.deb; do dpkg-deb -x "$f" "$r"; done
}
foreign_lib() { # SONAME: its path under $work/root
	local d
	for d in usr/lib/"$triplet" lib/"$triplet" usr/lib lib; do
		[[ -e $work/root/$d/$1 ]] && { echo "$work/root/$d/$1"; return; }
	done
	return 1
}
copy_foreign() { # path inside $work/root, copied with the libraries it needs
	local rel=$1 lib src
	src=$work/root/$rel
	[[ -e $st/$(guestpath "/$rel") ]] && return 0
	mkdir -p "$(dirname "$st/$(guestpath "/$rel")")"
	cp -L "$src" "$st/$(guestpath "/$rel")"
	for lib in $(readelf -d "$src" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
		lib=$(foreign_lib "$lib") || die "library $lib of $rel not found in the $arch packages"
		copy_foreign "${lib#"$work/root/"}"
	done
}
declare -A have=()
if [[ $arch != "$host_arch" ]]; then
	triplet=$(dpkg-architecture -a "$arch" -qDEB_HOST_MULTIARCH 2>/dev/null)
	foreign_root
	for b in "${BINS[@]}"; do
		[[ $b == bpftool ]] && continue # the host's would be of the wrong architecture
		brel=
		for d in usr/sbin usr/bin sbin bin; do
			[[ -e $work/root/$d/$b ]] && { brel=$d/$b; break; }
		done
		[[ -n $brel ]] || die "$b not found in the $arch packages"
		real=$(readlink -f "$work/root/$brel")
		brel=${real#"$work/root/"}
		copy_foreign "$brel"
		[[ $(basename "$brel") != "$b" ]] && ln -sf "/$(guestpath "/$brel")" "$st/usr/sbin/$b"
		have[$b]=1
	done
	interp=$(readelf -l "$work/root/usr/bin/dash" | sed -n 's/.*interpreter: \(.*\)\]/\1/p')
	copy_foreign "$(readlink -f "$work/root$interp" | sed "s|^$work/root/||")"
	[[ -e $st/$(guestpath "$interp") ]] || ln -s "/$(guestpath "$(readlink -f "$work/root$interp" | sed "s|^$work/root||")")" "$st/$(guestpath "$interp")"
	cp "$work/root/bin/busybox" "$st/usr/bin/busybox" 2>/dev/null || cp "$work/root/usr/bin/busybox" "$st/usr/bin/busybox"
else
	for b in "${BINS[@]}"; do
		p=$(command -v "$b") || die "$b not found on the host (run tools/vmtest/deps.sh)"
		copy_with_libs "$(readlink -f "$p")"
		# put it where Debian's PATH finds it, under the name asked for
		real=$(readlink -f "$p")
		if [[ $(basename "$real") != "$b" ]]; then
			ln -sf "/$(guestpath "$real")" "$st/usr/sbin/$b"
		fi
		have[$b]=1
	done
	cp "$(command -v busybox)" "$st/usr/bin/busybox"
fi
for a in $(busybox --list); do # the host's busybox names the applets (same for both arches)
	[[ -n ${have[$a]:-} || -e $st/usr/bin/$a || -e $st/usr/sbin/$a ]] && continue
	ln -s busybox "$st/usr/bin/$a"
done
[[ -e $st/usr/sbin/modprobe ]] || ln -s ../bin/busybox "$st/usr/sbin/modprobe"
rm -f "$st/usr/bin/sh"
ln -s dash "$st/usr/bin/sh"

# /etc
cat >"$st/etc/passwd" <<'E'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
E
cat >"$st/etc/group" <<'E'
root:x:0:
nogroup:x:65534:
E
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\tvmtest\n' >"$st/etc/hosts"
printf 'passwd: files\ngroup: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n' >"$st/etc/nsswitch.conf"
echo vmtest >"$st/etc/hostname"
for f in /etc/protocols /etc/services /etc/ethertypes; do
	[[ -f $f ]] && cp "$f" "$st/etc/"
done
[[ -d /etc/iproute2 ]] && cp -r /etc/iproute2 "$st/etc/"
mkdir -p "$st/etc/netns"

install -m 0755 "$here/init" "$st/init"

(cd "$st" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) >"$work/initramfs.cpio"
(cd "$st" && find . -mindepth 1 | sed 's|^\.||' | LC_ALL=C sort) >"$work/initramfs.files"

cp "$kimage" "$work/vmlinuz"
rm -f "$dir/vmlinux" "$dir/Image"
if [[ $arch == arm64 ]]; then
	# arm64's vmlinuz is a gzip'ed Image: qemu boots the Image itself (no firmware).
	if [[ $(head -c2 "$work/vmlinuz" | od -An -tx1 | tr -d ' ') == 1f8b ]]; then
		gzip -dc <"$work/vmlinuz" >"$dir/Image"
	else
		cp "$work/vmlinuz" "$dir/Image"
	fi
elif extract_vmlinux "$work/vmlinuz" "$work/vmlinux"; then
	mv -f "$work/vmlinux" "$dir/vmlinux"
else
	log "could not extract an uncompressed PVH vmlinux; booting the bzImage (about 2-5 s slower)"
fi
mv -f "$work/vmlinuz" "$dir/vmlinuz"
mv -f "$work/initramfs.cpio" "$dir/initramfs.cpio"
mv -f "$work/initramfs.files" "$dir/initramfs.files"
echo "$rel" >"$dir/release"
echo "$arch" >"$dir/arch"
echo "$stamp" >"$dir/stamp"
log "kernel $rel ready in $((SECONDS - t0))s: $(du -h "$dir/initramfs.cpio" | cut -f1) initramfs, ${#want_files[@]} modules"
echo "$dir"
