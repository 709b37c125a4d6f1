// Package events is the tracer's vocabulary: the typed, kernel-independent
// events that are its only currency, and the small stages that need nothing
// but events.
//
// Everything the kernel or a sampler tells the tracer becomes an Event: a
// Kind (kind.go numbers and names every one; recordings store the number)
// and the payload of that kind (Conn, Connect, Drop, Conntrack,
// ConntrackEntry, Counters, Sample). Stages downstream of the decoder see
// only Events and a clock, which is what lets a recording replay through the
// same code and give the same numbers.
//
// The stages here run on the event loop before the aggregator:
// Owners attributes connections that predate tracing, Filter applies the
// user's filters, and DropNames names drop events with what the caller read
// from the running kernel. PortInfo is the port data that internal/kernel
// reads and the caller hands to the aggregator. The aggregator and the
// findings rules are internal/aggregate.
//
// This package imports the standard library only and is testable without
// root.
package events
