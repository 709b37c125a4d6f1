/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading a system call's or a kernel function's arguments from saved
 * registers, on x86-64 and arm64 alike, from one compiled object.
 *
 * vmlinux.h describes an x86-64 kernel, and bpf2go's bpfel object is built
 * into the arm64 binaries too, so `regs->di` would be wrong there (arm64's
 * struct pt_regs has no di: CO-RE would refuse the program). Instead, each
 * architecture's registers are described by a local flavour of struct
 * pt_regs (the `___x86_64` / `___arm64` suffix is dropped when CO-RE matches
 * it with the running kernel's struct pt_regs), and bpf_core_field_exists
 * picks, at load time, the flavour whose registers the running kernel has:
 * the other branch is dead code that the verifier never walks. Every field
 * offset is relocated against the running kernel.
 *
 * How the registers are loaded: clang merges the two flavours' loads into
 * one load from `regs + offset`, the offset chosen in a register. Through
 * bpf_task_pt_regs' BTF-typed pointer the verifier accepts that (a known
 * constant offset), so syscall_arg's loads stay plain loads; a kprobe's ctx
 * must be loaded at a fixed offset from the unmodified pointer, so the
 * kprobe readers copy with bpf_probe_read_kernel (BPF_CORE_READ), as
 * libbpf's PT_REGS_*_CORE do.
 *
 * System call arguments (the caller's registers saved at entry):
 *   x86-64: di, si, dx, r10, r8, r9; the saved registers survive the call,
 *           so they are still the arguments at the syscall's exit.
 *   arm64:  x0..x5 (regs[0..5]); at exit regs[0] already holds the return
 *           value (el0_svc_common -> invoke_syscall stores it before the
 *           exit tracepoint runs), so the first argument is read from
 *           orig_x0, which keeps it for syscall restarts.
 * Kernel function arguments (kprobe ctx at the function's entry):
 *   x86-64: di, si, dx, cx, r8, r9; arm64: x0..x7. Return value (kretprobe):
 *   x86-64: ax; arm64: x0.
 * On another architecture neither flavour matches and the readers return 0.
 */
#ifndef CONNTRACER_REGS_H
#define CONNTRACER_REGS_H

struct pt_regs___x86_64 {
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long cx;
	unsigned long r10;
	unsigned long r8;
	unsigned long r9;
	unsigned long ax;
} __attribute__((preserve_access_index));

/* arm64: regs[] sits in an anonymous union of struct pt_regs (with
 * struct user_pt_regs); CO-RE looks through anonymous members. */
struct pt_regs___arm64 {
	__u64 regs[31];
	__u64 orig_x0;
} __attribute__((preserve_access_index));

/* The running kernel's architecture, decided at load time (CO-RE). */
static __always_inline bool regs_x86_64(void *regs)
{
	return bpf_core_field_exists(((struct pt_regs___x86_64 *)regs)->r10);
}

static __always_inline bool regs_arm64(void *regs)
{
	return bpf_core_field_exists(((struct pt_regs___arm64 *)regs)->orig_x0);
}

/*
 * syscall_arg returns argument n (0-5, a constant) of the system call whose
 * registers were saved in regs (bpf_task_pt_regs of the current task), at
 * its entry or its exit.
 */
static __always_inline __u64 syscall_arg(struct pt_regs *regs, const int n)
{
	struct pt_regs___x86_64 *x = (void *)regs;
	struct pt_regs___arm64 *a = (void *)regs;

	if (regs_x86_64(regs)) {
		switch (n) {
		case 0: return x->di;
		case 1: return x->si;
		case 2: return x->dx;
		case 3: return x->r10;
		case 4: return x->r8;
		case 5: return x->r9;
		}
	} else if (regs_arm64(regs)) {
		switch (n) {
		case 0: return a->orig_x0;
		case 1: return a->regs[1];
		case 2: return a->regs[2];
		case 3: return a->regs[3];
		case 4: return a->regs[4];
		case 5: return a->regs[5];
		}
	}
	return 0;
}

/* kprobe_arg returns argument n (0-5, a constant) of the probed kernel
 * function, from a kprobe's ctx at the function's entry. */
static __always_inline __u64 kprobe_arg(struct pt_regs *ctx, const int n)
{
	struct pt_regs___x86_64 *x = (void *)ctx;
	struct pt_regs___arm64 *a = (void *)ctx;

	if (regs_x86_64(ctx)) {
		switch (n) {
		case 0: return BPF_CORE_READ(x, di);
		case 1: return BPF_CORE_READ(x, si);
		case 2: return BPF_CORE_READ(x, dx);
		case 3: return BPF_CORE_READ(x, cx);
		case 4: return BPF_CORE_READ(x, r8);
		case 5: return BPF_CORE_READ(x, r9);
		}
	} else if (regs_arm64(ctx)) {
		switch (n) {
		case 0: return BPF_CORE_READ(a, regs[0]);
		case 1: return BPF_CORE_READ(a, regs[1]);
		case 2: return BPF_CORE_READ(a, regs[2]);
		case 3: return BPF_CORE_READ(a, regs[3]);
		case 4: return BPF_CORE_READ(a, regs[4]);
		case 5: return BPF_CORE_READ(a, regs[5]);
		}
	}
	return 0;
}

/* kprobe_ret returns the probed function's return value, from a
 * kretprobe's ctx. */
static __always_inline __u64 kprobe_ret(struct pt_regs *ctx)
{
	if (regs_x86_64(ctx))
		return BPF_CORE_READ((struct pt_regs___x86_64 *)ctx, ax);
	if (regs_arm64(ctx))
		return BPF_CORE_READ((struct pt_regs___arm64 *)ctx, regs[0]);
	return 0;
}

/*
 * Layouts of the classic syscall tracepoints' records (the format files
 * under events/syscalls/: the same on every 64-bit architecture).
 */
struct sys_exit_ctx {
	__u64 common; /* common_type, common_flags, common_preempt_count, common_pid */
	__s32 nr;     /* __syscall_nr */
	__s32 pad;
	__s64 ret;
};

#endif /* CONNTRACER_REGS_H */
