// Package aggregate turns the stream of events into what operators read: per
// process and per remote counters, open sockets by state, TIME_WAIT and
// port use, the drop, connect and conntrack sub-aggregates, histograms, and
// the findings rules that judge them. One writer (the event loop) calls
// Aggregator.Apply; readers get immutable Snapshots.
//
// It sees only events and a clock, so a recording replayed through it gives
// the live numbers. Standard library and internal/events only.
package aggregate
