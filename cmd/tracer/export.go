package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/pflag"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/record"
)

// runExport is `tracer export FILE... --format jsonl`: every recorded
// event as one JSON object per line, for jq and notebooks.
func runExport(args []string, stdout, stderr io.Writer) error {
	fs := pflag.NewFlagSet("tracer export", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	help := fs.BoolP("help", "h", false, "show this help")
	format := fs.String("format", "jsonl", "jsonl: one JSON object per event")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *help {
		fmt.Fprintf(stdout, "Usage: tracer export FILE... [--format jsonl]\n\nConnections, failed connects and drops are written as the live stream writes\nthem (tracer --output json). Other events (sampler rounds, conntrack statistics,\nsuccessful connects) have time (when the event was applied), type, and the\nevent's parts that are set (conn, connect, drop, conntrack, sample). Socket-table\nrounds are written in full, as the aggregator saw them.\n\nFlags:\n%s", fs.FlagUsages())
		return nil
	}
	if *format != "jsonl" {
		return usagef("unknown --format %q: use jsonl", *format)
	}
	if fs.NArg() == 0 {
		return usagef("tracer export needs at least one recording file")
	}
	bw := bufio.NewWriterSize(stdout, 1<<16)
	enc := json.NewEncoder(bw)
	var ev events.Event
	for _, p := range fs.Args() {
		r, err := record.Open(p)
		if err != nil {
			return err
		}
		// Connections, failed connects and drops in the live stream's JSON
		// (documented in the README), with the recording host's boot time.
		boot := r.Header().BootTimeNs
		stream := export.NewStream(bw, export.FormatJSON, func(ns uint64) time.Time { return time.Unix(0, boot+int64(ns)).UTC() })
		for {
			now, err := r.Next(&ev)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.Close()
				return err
			}
			if streamed(&ev) {
				err = stream.Print(&ev)
				if err == nil {
					err = stream.Flush()
				}
			} else {
				err = enc.Encode(exportLine(&ev, now))
			}
			if err != nil {
				r.Close()
				return err
			}
		}
		if st := r.Stats(); st.LostBytes > 0 || st.LostBlocks > 0 {
			fmt.Fprintf(stderr, "tracer: warning: %s is damaged: %d bytes (%d blocks) could not be read\n", p, st.LostBytes, st.LostBlocks)
		}
		r.Close()
	}
	return bw.Flush()
}

// streamed says whether the live stream has a line format for ev.
func streamed(ev *events.Event) bool {
	switch ev.Kind {
	case events.KindConnClosed, events.KindDrop, events.KindListenOverflow:
		return true
	case events.KindConnect:
		return ev.Connect.Failed()
	}
	return false
}

// exportedEvent is the JSON shape of the kinds the live stream does not
// print (sampler rounds, conntrack statistics...): the time the event was
// applied, its type, and only the parts that are set, with Go field names.
type exportedEvent struct {
	Time      time.Time         `json:"time"`
	Kind      string            `json:"type"`
	Comm      string            `json:"comm,omitempty"` // the owner's command name, readable
	Conn      *events.Conn      `json:"conn,omitempty"`
	Connect   *events.Connect   `json:"connect,omitempty"`
	Drop      *events.Drop      `json:"drop,omitempty"`
	Conntrack *events.Conntrack `json:"conntrack,omitempty"`
	Sample    *events.Sample    `json:"sample,omitempty"`
	Counters  *exportedCounters `json:"counters,omitempty"`
}

// exportedCounters are kernel or tracer counters by name, not index.
type exportedCounters struct {
	NetNS  uint32            `json:"netns,omitempty"`
	Object string            `json:"object,omitempty"`
	TimeNs uint64            `json:"time_ns,omitempty"`
	Values map[string]uint64 `json:"values"`
}

func exportLine(ev *events.Event, now time.Time) *exportedEvent {
	x := &exportedEvent{Time: now, Kind: ev.Kind.String()}
	if ev.Conn != (events.Conn{}) {
		x.Conn = &ev.Conn
		x.Comm = string(ev.Conn.Owner.CommBytes())
	}
	if ev.Connect != (events.Connect{}) {
		x.Connect = &ev.Connect
		x.Comm = string(ev.Connect.Owner.CommBytes())
	}
	if ev.Drop != (events.Drop{}) {
		x.Drop = &ev.Drop
	}
	if ev.Conntrack != (events.Conntrack{}) {
		x.Conntrack = &ev.Conntrack
	}
	if ev.Sample != (events.Sample{}) {
		x.Sample = &ev.Sample
	}
	if ev.Counters != (events.Counters{}) {
		c := ev.Counters
		x.Counters = &exportedCounters{NetNS: c.NetNS, Object: c.Object, TimeNs: c.TimeNs, Values: map[string]uint64{}}
		names := events.KernelCounterNames[:]
		if ev.Kind == events.KindTracerCounters {
			names = events.TracerCounterNames[:]
		}
		for i, n := range names {
			x.Counters.Values[n] = c.Values[i]
		}
	}
	return x
}
