package session

import "runtime/debug"

// releaseStartupMemory returns to the kernel, once tracing runs, the heap
// pages that starting needed and running does not: the kernel's parsed
// BTF (tens of MiB while the programs load and drop reasons are named;
// garbage afterwards), the start-up socket scan. The Go runtime gives
// freed pages back only slowly otherwise, and an idle tracer's RSS would
// carry them for minutes.
func releaseStartupMemory() { debug.FreeOSMemory() }
