// Package aggregate turns the stream of events into what operators read: per
// process and per remote counters, open sockets by state, TIME_WAIT and
// port use, the drop, connect and conntrack sub-aggregates, histograms, and
// the findings rules that judge them. One writer (the event loop) calls
// Aggregator.Apply; readers get immutable Snapshots.
//
// The Aggregator (aggregate.go) owns tables that know nothing of it: the
// TIME_WAIT table (aggregate_timewait.go) is given the port table
// (aggregate_ports.go) and counts its entries in their owners' stats
// through the owners' own methods; the sub-aggregates of the other concerns
// (aggregate_parts.go: ConnectStats, DropStats, ConntrackStats, the
// histograms, CounterStats) each take the kinds they need from Apply.
// evaluate (findings.go), after each round of the socket table, only calls
// the rules, each a function beside the state it reads: pool_leak,
// close_wait_leak, no_reuse and fin_wait2_stuck by the remote's counters
// (aggregate_stats.go), time_wait_pileup by the TIME_WAIT table,
// port_exhaustion by the port table, and the sub-aggregates' rules
// (connectfindings.go, dropfindings.go).
//
// What only the running kernel knows is injected by the caller
// (SetDropNames, SetConnectRules with a PortInfoFunc): the package sees
// only events and a clock, so a recording replayed through it gives the
// live numbers. Standard library and internal/events only.
package aggregate
