package main

import (
	"time"

	"github.com/spf13/pflag"
)

// recordFlags are the recording flags of the live loop (`tracer top`,
// `tracer record` and `tracer serve`).
type recordFlags struct {
	record     string
	flight     time.Duration
	flightDir  string
	rotateSize int64
	rotateAge  time.Duration
	keep       int
	noView     bool
}

func addRecordFlags(fs *pflag.FlagSet, f *recordFlags) {
	fs.StringVar(&f.record, "record", "", "also record every aggregated event to this file (read it with `tracer report`)")
	fs.DurationVar(&f.flight, "flight-recorder", 0, "keep the last DURATION of events in memory and write them to --flight-dir on a new finding or SIGUSR1")
	fs.StringVar(&f.flightDir, "flight-dir", ".", "where --flight-recorder writes its dumps")
	fs.Int64Var(&f.rotateSize, "record-rotate-size", 0, "start a new recording file past this many bytes (0: never)")
	fs.DurationVar(&f.rotateAge, "record-rotate-age", 0, "start a new recording file after this long (0: never)")
	fs.IntVar(&f.keep, "record-keep", 5, "rotated recording files kept (FILE.1 newest)")
	fs.BoolVar(&f.noView, "no-view", false, "run without the terminal view (what `tracer record` does)")
}
