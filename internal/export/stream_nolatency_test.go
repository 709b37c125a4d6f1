package export

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

// TestStreamConnectWithoutLatency: a failed connect whose duration was not
// measured (the connect() entry hook is off by default) prints "-" in text
// and null in JSON, never a made-up 0.
func TestStreamConnectWithoutLatency(t *testing.T) {
	ev := connectEvents()[2] // EADDRNOTAVAIL to 10.0.0.2:80
	ev.Connect.StartNs, ev.Connect.LatencySumNs, ev.Connect.NoLatency = 0, 0, true

	var js bytes.Buffer
	s := NewStream(&js, FormatJSON, fixedClock)
	if err := s.Print(&ev); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	var m map[string]any
	if err := json.Unmarshal(js.Bytes(), &m); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, js.String())
	}
	if v, ok := m["latency_seconds"]; !ok || v != nil {
		t.Errorf("latency_seconds = %v (present %v), want null: %s", v, ok, js.String())
	}

	var txt bytes.Buffer
	s = NewStream(&txt, FormatText, fixedClock)
	if err := s.Print(&ev); err != nil {
		t.Fatal(err)
	}
	s.Flush()
	lines := strings.Split(strings.TrimSpace(txt.String()), "\n")
	f := strings.Fields(lines[len(lines)-1]) // after the header
	// time pid comm local remote role lifetime tx rx end
	if len(f) < 7 || f[5] != "connect" || f[6] != "-" {
		t.Errorf("text line %q: want \"-\" in the lifetime column", txt.String())
	}
}
