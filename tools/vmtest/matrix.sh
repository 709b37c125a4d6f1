#!/bin/bash
# matrix.sh [KERNEL...]: run `go test` on the packages inside each kernel in turn (through
# vmexec), keep a log per kernel, print a summary, and fail if any kernel failed.
#
# Which packages run where (CI's time budget): the whole suite (./...) on the kernels of
# VMTEST_FULL (default 6.1 6.12); on the others only the packages that touch the kernel
# (VMTEST_KERNEL_PKGS: the probe, internal/kernel, cmd/tracer's end-to-end tests, the smoke
# tests and tools/bench's privileged test). The other packages are pure Go: a kernel or an
# architecture does not change what they do. VMTEST_PKGS, when set, runs those packages on
# every kernel.
#
# Environment (all optional):
#   VMTEST_PKGS     packages for every kernel (default: the split above)
#   VMTEST_FULL     kernels that run ./... (default "6.1 6.12")
#   VMTEST_RUN      go test -run pattern
#   VMTEST_GOFLAGS  more go test flags, e.g. "-short" or "-run TestX -count=2"
#   VMTEST_TIMEOUT  go test -timeout per package binary, default 10m (TCG runs ~2x slower)
#   VMTEST_LOGDIR   where <kernel>.log goes, default .cache/vmtest-logs
#   VMEXEC_*        passed to vmexec (VMEXEC_ACCEL, VMEXEC_MEM, VMEXEC_MODULES, ...)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

kernels=("$@")
[[ ${#kernels[@]} -gt 0 ]] || kernels=(5.10 6.1 6.12 6.16 7.2 6.12-arm64)
full=" ${VMTEST_FULL:-6.1 6.12} "
kernel_pkgs=${VMTEST_KERNEL_PKGS:-./internal/probe ./internal/kernel ./cmd/tracer ./tools/vmtest/smoke ./tools/bench}
# Under arm64 emulation (qemu TCG on an x86 host) cmd/tracer's end-to-end tests exceed go
# test's 10-minute limit (620 s measured, the package timed out); the arch-specific code
# (syscall arguments through regs.h, CO-RE) is all in internal/probe, which runs there.
arm64_pkgs=${VMTEST_ARM64_PKGS:-./internal/probe ./internal/kernel ./tools/vmtest/smoke ./tools/bench}
pkgs_for() { # KERNEL: the packages to run in it
	if [[ -n ${VMTEST_PKGS:-} ]]; then
		echo "$VMTEST_PKGS"
	elif [[ $full == *" $1 "* ]]; then
		echo ./...
	elif [[ $1 == *-arm64 ]]; then
		echo "$arm64_pkgs"
	else
		echo "$kernel_pkgs"
	fi
}
read -r -a goflags <<<"${VMTEST_GOFLAGS:-}"
[[ -n ${VMTEST_RUN:-} ]] && goflags+=(-run "$VMTEST_RUN")
timeout=${VMTEST_TIMEOUT:-10m}
logdir=${VMTEST_LOGDIR:-$root/.cache/vmtest-logs}
mkdir -p "$logdir"
GO=${GO:-go}

fmt_secs() { printf '%dm%02ds' $(($1 / 60)) $(($1 % 60)); }

t_all=$SECONDS
# Kernels first (download once), then the test binaries built once and in parallel
# (-exec true runs nothing), so that the per-kernel runs below (-p 1: one qemu at a
# time) only link from the build cache.
declare -A karch=()
for k in "${kernels[@]}"; do
	d=$("$here/kernel.sh" "$k") || { echo "vmtest: kernel $k is not available" >&2; exit 1; }
	karch[$k]=$(cat "$d/arch" 2>/dev/null || echo amd64)
done
declare -A built=()
for k in "${kernels[@]}"; do
	a=${karch[$k]} p=$(pkgs_for "$k")
	[[ -n ${built["$a $p"]:-} ]] && continue
	built["$a $p"]=1
	echo "vmtest: building test binaries ($a: $p)"
	read -r -a pkgs <<<"$p"
	if ! build_out=$(GOARCH=$a "$GO" test -count=1 -exec /bin/true "${goflags[@]}" "${pkgs[@]}" 2>&1); then
		echo "$build_out" | grep -v '^ok \|no test files' >&2
		echo "vmtest: build failed; not booting any kernel" >&2
		exit 1
	fi
done

declare -a summary=() details=() failed_kernels=()
failed=0
for k in "${kernels[@]}"; do
	rel=$(cat "${VMTEST_CACHE:-$root/.cache}/kernels/$k/release" 2>/dev/null || echo "?")
	log=$logdir/$k.log
	read -r -a pkgs <<<"$(pkgs_for "$k")"
	echo "=== kernel $k ($rel, ${karch[$k]}): go test ${pkgs[*]}"
	t0=$SECONDS
	GOARCH=${karch[$k]} "$GO" test -count=1 -p 1 -v -timeout "$timeout" -exec "$here/vmexec --kernel $k" \
		"${goflags[@]}" "${pkgs[@]}" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	dt=$((SECONDS - t0))
	pk_ok=$(grep -c '^ok  	' "$log")
	pk_fail=$(grep -c '^FAIL	' "$log")
	t_pass=$(grep -c -- '--- PASS: ' "$log")
	t_fail=$(grep -c -- '--- FAIL: ' "$log")
	t_skip=$(grep -c -- '--- SKIP: ' "$log")
	if [[ $rc == 0 ]]; then verdict=PASS; else verdict=FAIL; failed=1; failed_kernels+=("$k"); fi
	# uname -m and the hook modes, as TestProbeHookModes (tools/vmtest/smoke) logged them
	machine=$(sed -n 's/.*vmtest-machine: [^ ]* //p' "$log" | head -n1)
	hooks=$(sed -n 's/.*vmtest-hooks: //p' "$log" | head -n1)
	summary+=("$(printf '%-10s %-26s %-7s %s  packages: %d ok, %d failed;  tests: %d passed, %d failed, %d skipped;  %s' \
		"$k" "$rel" "${machine:-?}" "$verdict" "$pk_ok" "$pk_fail" "$t_pass" "$t_fail" "$t_skip" "$(fmt_secs $dt)")")
	summary+=("           hooks: ${hooks:-(not reported: TestProbeHookModes did not run)}")
	while IFS= read -r l; do details+=("  $k ${l#"${l%%[! ]*}"}"); done < <(grep -E -- '--- (FAIL|SKIP): |^FAIL	' "$log")
done

echo
echo "=== kernel matrix summary ($(fmt_secs $((SECONDS - t_all))) in all; logs in ${logdir#"$root/"}/)"
printf '%s\n' "${summary[@]}"
if [[ ${#details[@]} -gt 0 ]]; then
	echo "failed and skipped (a skip inside a VM means that kernel did not cover the test):"
	printf '%s\n' "${details[@]}"
fi
# for a rerun of the failed kernels only (.ci/run)
printf '%s\n' "${failed_kernels[@]}" >"$logdir/failed-kernels"
exit $failed
