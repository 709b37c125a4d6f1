# Kernel matrix: the test suite inside Debian's kernels under qemu, amd64 5.10 to 7.2 and
# arm64 6.12 (tools/vmtest, see tools/vmtest/README.md). Included by the main Makefile.
#
#   make test-kernels                          # the matrix (./... on 6.1 and 6.12, the
#                                              # kernel-facing packages on the others)
#   make test-kernels KERNELS=6.12             # one kernel
#   make test-kernels KERNELS=6.1 PKGS=./internal/kernel RUN='TestX$$' VMTEST_GOFLAGS=-short
#   make kernels                               # download and cache the kernels only

KERNELS ?= 5.10 6.1 6.12 6.16 7.2 6.12-arm64
# empty: matrix.sh's split (the whole suite on 6.1 and 6.12, the kernel-facing packages
# elsewhere); set, those packages on every kernel
PKGS    ?=
RUN     ?=
VMTEST  := tools/vmtest
# more go test flags for every kernel, e.g. -short or -count=2
VMTEST_GOFLAGS ?=

.PHONY: vmtest-deps
vmtest-deps: ## install the kernel matrix's host packages (qemu, busybox-static, ...) if missing
	@$(VMTEST)/deps.sh

.PHONY: kernels
kernels: vmtest-deps ## download and cache the matrix kernels ($(KERNELS)) and their initramfs
	@for k in $(KERNELS); do \
		d=$$($(VMTEST)/kernel.sh $$k) || exit 1; \
		echo "kernel $$k: $$(cat $$d/release) from $$(cat $$d/package), cached in $$d"; \
	done

.PHONY: test-kernels
test-kernels: kernels ## run the tests inside each kernel of $(KERNELS) (qemu, TCG), with a summary
	@VMTEST_PKGS='$(PKGS)' VMTEST_RUN='$(RUN)' VMTEST_GOFLAGS='$(VMTEST_GOFLAGS)' GO='$(or $(GO),go)' $(VMTEST)/matrix.sh $(KERNELS)

.PHONY: vagrant-validate
vagrant-validate: ## check the Vagrantfile with `vagrant validate` (installs Debian's vagrant)
	@$(VMTEST)/deps.sh vagrant
	@$(VMTEST)/check-vagrantfile.sh
