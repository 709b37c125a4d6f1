package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
	"github.com/conntracer/conntracer/internal/record"
)

// runExport is `tracer export FILE... --format jsonl`: every recorded
// event as one JSON object per line, for jq and notebooks.
func runExport(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("tracer export")
	help := fs.BoolP("help", "h", false, "show this help")
	format := fs.String("format", "jsonl", "jsonl: one JSON object per event")
	if err := fs.Parse(args); err != nil {
		return usageError{err}
	}
	if *help {
		fmt.Fprintf(stdout, "Usage: tracer export FILE... [--format jsonl]\n\nConnections, failed connects and drops are written as the live stream writes\nthem (tracer --output json). Other events (sampler rounds, conntrack statistics\nand entries, successful connects) have time (when the event was applied), type,\nand the event's parts that are set (conn, connect, drop, conntrack,\nconntrack_entry, sample, counters), in the schema the README documents:\nsnake_case, enums by name, kernel times as wall-clock times, null for what is\nnot known. Socket-table rounds are written in full, as the aggregator saw them.\n\nFlags:\n%s", fs.FlagUsages())
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
		wall := func(ns uint64) time.Time { return time.Unix(0, boot+int64(ns)).UTC() }
		stream := export.NewStream(bw, export.FormatJSON, wall)
		for {
			now, err := r.Next(&ev)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				r.Close()
				return err
			}
			if export.Streamed(&ev) {
				err = stream.Print(&ev)
				if err == nil {
					err = stream.Flush()
				}
			} else {
				err = enc.Encode(export.NewEventJSON(&ev, now, wall))
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
