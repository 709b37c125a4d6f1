// Package version says which build of the tracer is running: the version
// stamped at link time by `make build` and the Dockerfile, else what the
// Go toolchain recorded (a module version, or the VCS revision), for
// `tracer --version`, the conntracer_build_info metric, the landing page
// and recording headers.
package version

import (
	"runtime"
	"runtime/debug"
	"strings"
)

// stamped is set by the linker only:
//
//	go build -ldflags "-X github.com/conntracer/conntracer/internal/version.stamped=v1.2.3"
//
// (the Makefile passes `git describe --tags --always --dirty`). Nothing
// writes it at run time.
var stamped string

// Info is what is known of this build.
type Info struct {
	Version   string // "v1.2.3", "v1.2.3-4-gabcdef0-dirty", or "devel" when nothing says
	Revision  string // VCS commit, "" when unknown
	Modified  bool   // built from a work tree with uncommitted changes
	GoVersion string
}

// Get returns what is known of this build.
func Get() Info {
	info := Info{Version: stamped, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				info.Revision = s.Value
			case "vcs.modified":
				info.Modified = s.Value == "true"
			}
		}
		if info.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			info.Version = bi.Main.Version
		}
	}
	if info.Version == "" {
		info.Version = "devel"
		if info.Revision != "" {
			info.Version += "-" + shortRev(info.Revision)
			if info.Modified {
				info.Version += "-dirty"
			}
		}
	}
	return info
}

// Version is Get().Version: the one string to print or record.
func Version() string { return Get().Version }

// String is the line `tracer --version` prints.
func (i Info) String() string {
	var b strings.Builder
	b.WriteString("tracer " + i.Version)
	if i.Revision != "" && !strings.Contains(i.Version, shortRev(i.Revision)) {
		b.WriteString(" (revision " + shortRev(i.Revision) + ")")
	}
	b.WriteString(", built with " + i.GoVersion)
	return b.String()
}

func shortRev(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}
