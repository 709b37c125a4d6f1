#!/bin/bash
# matrix.sh [KERNEL...]: run `go test` on the packages inside each kernel in turn (through
# vmexec), keep a log per kernel, rerun what failed once, print a summary, and fail if any
# kernel failed twice.
#
# Which packages run where (CI's time budget): the whole suite (./...) on the kernels of
# VMTEST_FULL (default 6.1 6.12: the oldest LTS kernel with every feature and Debian
# stable's), cmd/tracer's end-to-end tests included (five minutes per kernel under
# emulation). On the others only the packages that touch the kernel: the rest are pure Go,
# which a kernel does not change, and cmd/tracer's end-to-end tests exercise the same hooks
# as internal/probe's below them (on arm64 they exceeded go test's 10 minutes, 620 s
# measured; the arch-specific code, syscall arguments through regs.h and CO-RE, is all in
# internal/probe). VMTEST_PKGS, when set, runs those packages on every kernel.
#
# A failure under full emulation (TCG) can be the emulator's stall rather than the tracer:
# the tests that failed (or, for a package that crashed or timed out, the package) run once
# more in the same kernel; the kernel passes if they all pass then, and the summary names
# them as flaky so that they stay visible. VMTEST_RERUN=0 turns this off.
#
# Environment (all optional):
#   VMTEST_PKGS     packages for every kernel (default: the split above)
#   VMTEST_FULL     kernels that run the whole suite (default "6.1 6.12")
#   VMTEST_RUN      go test -run pattern
#   VMTEST_GOFLAGS  more go test flags, e.g. "-short" or "-run TestX -count=2"
#   VMTEST_TIMEOUT  go test -timeout per package binary, default 10m (TCG runs ~2x slower)
#   VMTEST_RERUN    1 (default): rerun failed tests once; 0: do not
#   VMTEST_LOGDIR   where <kernel>.log goes, default .cache/vmtest-logs
#   VMEXEC_*        passed to vmexec (VMEXEC_ACCEL, VMEXEC_MEM, VMEXEC_MODULES, ...)
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root" || exit 1

kernels=("$@")
[[ ${#kernels[@]} -gt 0 ]] || kernels=(5.10 6.1 6.12 6.16 7.2 6.12-arm64)
full=" ${VMTEST_FULL:-6.1 6.12} "
kernel_pkgs="./internal/probe ./internal/kernel ./tools/vmtest/smoke ./tools/bench"
pkgs_for() { # KERNEL: the packages to run in it
	if [[ -n ${VMTEST_PKGS:-} ]]; then
		echo "$VMTEST_PKGS"
	elif [[ $full == *" $1 "* ]]; then
		echo ./...
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

# failed_tests LOG: one line per package that failed, "PKG TEST|TEST..." naming its failed
# top-level tests, or "PKG" alone when it failed without any (a panic, a timeout).
failed_tests() {
	awk '
		/^--- FAIL: / { t = $3; if (!(t in seen)) { seen[t] = 1; names = names (names == "" ? "" : "|") t } }
		/^(ok|FAIL)[ \t]/ {
			if ($1 == "FAIL" && $2 != "") print $2 (names == "" ? "" : " " names)
			names = ""; delete seen
		}' "$1"
}

run_kernel() { # KERNEL LOG GO-TEST-ARGS...: go test inside the kernel, tee'd to LOG
	local k=$1 log=$2
	shift 2
	GOARCH=${karch[$k]} "$GO" test -count=1 -p 1 -v -timeout "$timeout" -exec "$here/vmexec --kernel $k" \
		"${goflags[@]}" "$@" 2>&1 | tee "$log"
	return "${PIPESTATUS[0]}"
}

declare -a summary=() details=() failed_kernels=()
failed=0
for k in "${kernels[@]}"; do
	rel=$(cat "${VMTEST_CACHE:-$root/.cache}/kernels/$k/release" 2>/dev/null || echo "?")
	log=$logdir/$k.log
	read -r -a pkgs <<<"$(pkgs_for "$k")"
	echo "=== kernel $k ($rel, ${karch[$k]}): go test ${pkgs[*]}"
	t0=$SECONDS
	run_kernel "$k" "$log" "${pkgs[@]}"
	rc=$?
	pk_ok=$(grep -c '^ok  	' "$log")
	pk_fail=$(grep -c '^FAIL	' "$log")
	t_pass=$(grep -c -- '--- PASS: ' "$log")
	t_fail=$(grep -c -- '--- FAIL: ' "$log")
	t_skip=$(grep -c -- '--- SKIP: ' "$log")
	flaky=""
	if [[ $rc != 0 && ${VMTEST_RERUN:-1} == 1 ]]; then
		# Once more, only what failed: each failed package with -run naming its failed
		# tests (the whole package if none is named).
		rc=0
		while read -r pkg names; do
			[[ -n $pkg ]] || continue
			echo "=== kernel $k: once more, $pkg ${names:-(the whole package)}"
			args=("$pkg")
			[[ -n $names ]] && args=(-run "^($names)\$" "$pkg")
			run_kernel "$k" "$log.rerun" "${args[@]}" || rc=1
			cat "$log.rerun" >>"$log.reruns"
			flaky+=" ${names:-$pkg}"
		done < <(failed_tests "$log")
		rm -f "$log.rerun"
		[[ $rc == 0 ]] || flaky=""
	fi
	dt=$((SECONDS - t0))
	if [[ $rc == 0 ]]; then verdict=PASS; else verdict=FAIL; failed=1; failed_kernels+=("$k"); fi
	# uname -m and the hook modes, as TestProbeHookModes (tools/vmtest/smoke) logged them
	machine=$(sed -n 's/.*vmtest-machine: [^ ]* //p' "$log" | head -n1)
	hooks=$(sed -n 's/.*vmtest-hooks: //p' "$log" | head -n1)
	summary+=("$(printf '%-10s %-26s %-7s %s  packages: %d ok, %d failed;  tests: %d passed, %d failed, %d skipped;  %s' \
		"$k" "$rel" "${machine:-?}" "$verdict" "$pk_ok" "$pk_fail" "$t_pass" "$t_fail" "$t_skip" "$(fmt_secs $dt)")")
	summary+=("           hooks: ${hooks:-(not reported: TestProbeHookModes did not run)}")
	[[ -n $flaky ]] && summary+=("           failed once, passed when run again (flaky under emulation):$flaky")
	while IFS= read -r l; do details+=("  $k ${l#"${l%%[! ]*}"}"); done < <(grep -E -- '--- (FAIL|SKIP): |^FAIL	' "$log")
	if [[ $verdict == FAIL && -f $log.reruns ]]; then
		while IFS= read -r l; do details+=("  $k (again) ${l#"${l%%[! ]*}"}"); done < <(grep -E -- '--- FAIL: |^FAIL	' "$log.reruns")
	fi
	rm -f "$log.reruns"
done

echo
echo "=== kernel matrix summary ($(fmt_secs $((SECONDS - t_all))) in all; logs in ${logdir#"$root/"}/)"
printf '%s\n' "${summary[@]}"
if [[ ${#details[@]} -gt 0 ]]; then
	echo "failed and skipped (a skip inside a VM means that kernel did not cover the test):"
	printf '%s\n' "${details[@]}"
fi
printf '%s\n' "${failed_kernels[@]}" >"$logdir/failed-kernels"
exit $failed
