#!/bin/bash
# matrix.sh [KERNEL...]: run `go test` on the packages inside each kernel in turn (through
# vmexec), keep a log per kernel, print a summary, and fail if any kernel failed.
#
# Environment (all optional):
#   VMTEST_PKGS     packages, default ./...
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
[[ ${#kernels[@]} -gt 0 ]] || kernels=(6.1 6.12)
read -r -a pkgs <<<"${VMTEST_PKGS:-./...}"
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
for k in "${kernels[@]}"; do
	"$here/kernel.sh" "$k" >/dev/null || { echo "vmtest: kernel $k is not available" >&2; exit 1; }
done
echo "vmtest: building test binaries"
if ! build_out=$("$GO" test -count=1 -exec /bin/true "${goflags[@]}" "${pkgs[@]}" 2>&1); then
	echo "$build_out" | grep -v '^ok \|no test files' >&2
	echo "vmtest: build failed; not booting any kernel" >&2
	exit 1
fi

declare -a summary=() details=()
failed=0
for k in "${kernels[@]}"; do
	rel=$(cat "${VMTEST_CACHE:-$root/.cache}/kernels/$k/release" 2>/dev/null || echo "?")
	log=$logdir/$k.log
	echo "=== kernel $k ($rel): go test ${pkgs[*]}"
	t0=$SECONDS
	"$GO" test -count=1 -p 1 -v -timeout "$timeout" -exec "$here/vmexec --kernel $k" \
		"${goflags[@]}" "${pkgs[@]}" 2>&1 | tee "$log"
	rc=${PIPESTATUS[0]}
	dt=$((SECONDS - t0))
	pk_ok=$(grep -c '^ok  	' "$log")
	pk_fail=$(grep -c '^FAIL	' "$log")
	t_pass=$(grep -c -- '--- PASS: ' "$log")
	t_fail=$(grep -c -- '--- FAIL: ' "$log")
	t_skip=$(grep -c -- '--- SKIP: ' "$log")
	if [[ $rc == 0 ]]; then verdict=PASS; else verdict=FAIL; failed=1; fi
	summary+=("$(printf '%-6s %-24s %s  packages: %d ok, %d failed;  tests: %d passed, %d failed, %d skipped;  %s' \
		"$k" "$rel" "$verdict" "$pk_ok" "$pk_fail" "$t_pass" "$t_fail" "$t_skip" "$(fmt_secs $dt)")")
	while IFS= read -r l; do details+=("  $k ${l#"${l%%[! ]*}"}"); done < <(grep -E -- '--- (FAIL|SKIP): |^FAIL	' "$log")
done

echo
echo "=== kernel matrix summary ($(fmt_secs $((SECONDS - t_all))) in all; logs in ${logdir#"$root/"}/)"
printf '%s\n' "${summary[@]}"
if [[ ${#details[@]} -gt 0 ]]; then
	echo "failed and skipped (a skip inside a VM means that kernel did not cover the test):"
	printf '%s\n' "${details[@]}"
fi
exit $failed
