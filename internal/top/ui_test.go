package top

import (
	"strings"
	"testing"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/export"
)

// TestFindingsKey: the `f` key that --help advertises switches to the
// list of every finding with its remedy, and back.
func TestFindingsKey(t *testing.T) {
	snap := &aggregate.Snapshot{}
	for i := range 12 {
		snap.Findings = append(snap.Findings, aggregate.Finding{Kind: "pool_leak", PID: uint32(100 + i), Comm: "app",
			Message: "leaks", Remedy: "cap the pool"})
	}
	ui := NewUI(func() *aggregate.Snapshot { return snap }, 0, export.ColOpens)
	var m tea.Model = model{ui: ui, opts: export.ViewOptions{Sort: export.ColOpens, Width: 120, Height: 40}, snap: snap}
	if v := m.View(); strings.Contains(v, "remedy:") || !strings.Contains(v, "... and 4 more") {
		t.Fatalf("table view before f:\n%s", v)
	}
	f := tea.KeyMsg{Type: tea.KeyRunes, Runes: []rune{'f'}}
	m, _ = m.Update(f)
	if v := m.View(); strings.Count(v, "remedy: cap the pool") != 12 || strings.Contains(v, "more") {
		t.Errorf("after f, want all 12 findings with remedies:\n%s", v)
	}
	m, _ = m.Update(f)
	if v := m.View(); strings.Contains(v, "remedy:") {
		t.Errorf("a second f should go back to the table:\n%s", v)
	}
}
