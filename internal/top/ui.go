// Package top is the live terminal view of `tracer top`: a bubbletea
// program that redraws the last published snapshot, with keys to sort,
// filter and switch to one row per process x remote. What it draws is
// internal/export's text rendering of the snapshot; it never sees the
// aggregator, only a function returning the last published snapshot.
// May import: internal/aggregate (the Snapshot type), internal/export,
// terminal UI libraries.
package top

import (
	"context"
	"errors"
	"io"
	"os"
	"time"

	tea "github.com/charmbracelet/bubbletea"

	"github.com/conntracer/conntracer/internal/aggregate"
	"github.com/conntracer/conntracer/internal/events"
	"github.com/conntracer/conntracer/internal/export"
)

// UI is the live terminal view. It pulls the latest published snapshot
// once per refresh through a function, so it never touches the
// aggregator; bubbletea redraws only the lines that changed, which keeps
// it flicker-free over SSH.
type UI struct {
	snapshot func() *aggregate.Snapshot
	every    time.Duration
	sort     export.Column
	// Identities names processes' containers and pods (a WORKLOAD
	// column, matched by the filter); nil: none. Set before Run.
	Identities events.CgroupLookup
	// NetNSNames names network namespaces (a NETNS column, matched by
	// the filter); nil: none. Set before Run.
	NetNSNames events.NetNSLookup
}

// NewUI returns a view refreshed every `every` from snapshot().
func NewUI(snapshot func() *aggregate.Snapshot, every time.Duration, sort export.Column) *UI {
	return &UI{snapshot: snapshot, every: every, sort: sort}
}

// Run shows the view on the terminal until the user quits or ctx ends.
func (u *UI) Run(ctx context.Context, out io.Writer) error {
	m := model{ui: u, opts: export.ViewOptions{Sort: u.sort, Width: 120, Height: 40, Identities: u.Identities, NetNSNames: u.NetNSNames}, snap: u.snapshot()}
	p := tea.NewProgram(m, tea.WithContext(ctx), tea.WithOutput(out), tea.WithInput(os.Stdin), tea.WithAltScreen())
	_, err := p.Run()
	if errors.Is(err, tea.ErrInterrupted) || (errors.Is(err, tea.ErrProgramKilled) && ctx.Err() != nil) {
		return nil // the tracer stopped (Ctrl-C, SIGTERM)
	}
	return err
}

type tickMsg time.Time

type model struct {
	ui        *UI
	opts      export.ViewOptions
	snap      *aggregate.Snapshot
	filtering bool
}

func (m model) tick() tea.Cmd {
	return tea.Tick(m.ui.every, func(t time.Time) tea.Msg { return tickMsg(t) })
}

// Init implements tea.Model.
func (m model) Init() tea.Cmd { return m.tick() }

// Update implements tea.Model.
func (m model) Update(msg tea.Msg) (tea.Model, tea.Cmd) {
	switch msg := msg.(type) {
	case tickMsg:
		m.snap = m.ui.snapshot()
		return m, m.tick()
	case tea.WindowSizeMsg:
		m.opts.Width, m.opts.Height = msg.Width, msg.Height
	case tea.KeyMsg:
		if m.filtering {
			switch msg.Type {
			case tea.KeyEnter:
				m.filtering = false
			case tea.KeyEsc:
				m.filtering, m.opts.Filter = false, ""
			case tea.KeyBackspace:
				if n := len(m.opts.Filter); n > 0 {
					m.opts.Filter = m.opts.Filter[:n-1]
				}
			case tea.KeyRunes:
				m.opts.Filter += string(msg.Runes)
			}
			return m, nil
		}
		switch msg.String() {
		case "q", "ctrl+c":
			return m, tea.Quit
		case "s":
			m.opts.Sort = m.opts.Sort.Step(1)
		case "S":
			m.opts.Sort = m.opts.Sort.Step(-1)
		case "r":
			m.opts.Remotes = !m.opts.Remotes
		case "f":
			m.opts.Findings = !m.opts.Findings
		case "/":
			m.filtering = true
		case "esc":
			m.opts.Filter = ""
		}
	}
	return m, nil
}

// View implements tea.Model.
func (m model) View() string {
	o := m.opts
	if m.filtering {
		o.Filter += "_"
	}
	return export.RenderText(m.snap, o)
}
