package record

import (
	"testing"

	"github.com/conntracer/conntracer/internal/events"
)

// TestRoundTripConnectWithoutLatency: a connect whose duration was not
// measured (no entry hook, the default) keeps saying so after a round
// trip through a recording, with its start left at 0.
func TestRoundTripConnectWithoutLatency(t *testing.T) {
	c := events.Event{Kind: events.KindConnect, Connect: events.Connect{
		Owner: owner(42, "curl"), NetNS: 9, Family: events.FamilyUnix, SockType: events.SockStream,
		Errno: events.ErrnoECONNREFUSED, Count: 1, EndNs: 99, NoLatency: true,
	}}
	c.Connect.Path.Set([]byte("/run/app.sock"))
	want := []stamped{{c, t0}}
	got, _, err := readAll(t, writeAll(t, Options{}, want))
	if err != nil {
		t.Fatal(err)
	}
	equalStamped(t, got, want)
	if len(got) == 1 && !got[0].ev.Connect.NoLatency {
		t.Errorf("NoLatency lost in the round trip: %+v", got[0].ev.Connect)
	}
}
