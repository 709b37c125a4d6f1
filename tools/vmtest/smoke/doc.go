// Package smoke holds the kernel-matrix harness's smoke test (smoke_test.go): it proves
// that a kernel booted by tools/vmtest/vmexec runs fentry, kprobe and module-BTF
// (nf_conntrack) programs, and that on a kernel without them (the locked-down host) the
// same tests skip with a clear message. See tools/vmtest/README.md.
package smoke
