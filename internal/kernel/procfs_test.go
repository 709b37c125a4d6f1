package kernel

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// statLine builds a /proc/PID/stat line with the given comm and starttime
// (field 22), the other fields set to plausible values.
func statLine(pid int, comm string, start uint64) string {
	// Fields 3..21, then starttime, then fields 23..52.
	f := []string{"S", "1", "100", "100", "0", "-1", "4194560", "100", "0", "0", "0",
		"7", "3", "0", "0", "20", "0", "1", "0"}
	f = append(f, fmt.Sprint(start))
	for i := 23; i <= 52; i++ {
		f = append(f, "0")
	}
	return fmt.Sprintf("%d (%s) %s\n", pid, comm, strings.Join(f, " "))
}

func TestParseStatStartTime(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		line    string
		want    uint64
		wantErr string
	}{
		{name: "plain", line: statLine(42, "bash", 123456), want: 123456 * 10_000_000},
		{name: "comm with parens and spaces", line: statLine(42, "a) b (c", 7), want: 70_000_000},
		{name: "comm ending in paren", line: statLine(42, "x)", 1), want: 10_000_000},
		{name: "comm of numbers", line: statLine(42, "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20", 5), want: 50_000_000},
		{name: "zero", line: statLine(1, "init", 0), want: 0},
		{name: "no paren", line: "42 bash S 1 2 3", wantErr: "no ')'"},
		{name: "truncated", line: "42 (bash) S 1 2 3\n", wantErr: "fields after comm"},
		{name: "not a number", line: strings.Replace(statLine(42, "bash", 99), " 99 ", " x9 ", 1), wantErr: "parse starttime"},
		{name: "empty", line: "", wantErr: "no ')'"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStatStartTime(strings.NewReader(tt.line))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("start = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestParseStatStartTimeSelf(t *testing.T) {
	t.Parallel()
	// The real file must parse, and our own start lies in the past.
	f, err := os.Open("/proc/self/stat")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	defer f.Close()
	start, err := parseStatStartTime(f)
	if err != nil {
		t.Fatal(err)
	}
	if now := bootTimeNs(t); start == 0 || start > now {
		t.Errorf("own start %d ns, boot time now %d ns", start, now)
	}
}

func TestParseCgroupV2Path(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{name: "pure v2", in: "0::/system.slice/nginx.service\n", want: "/system.slice/nginx.service"},
		{name: "root", in: "0::/\n", want: "/"},
		{name: "hybrid", in: "12:pids:/user.slice\n4:memory:/x\n1:name=systemd:/user.slice/s\n0::/user.slice/s\n", want: "/user.slice/s"},
		{name: "colon in path", in: "0::/a:b/c\n", want: "/a:b/c"},
		{name: "no trailing newline", in: "0::/a", want: "/a"},
		{name: "v1 only", in: "4:memory:/x\n1:cpu:/\n", wantErr: errNoCgroupV2},
		{name: "empty", in: "", wantErr: errNoCgroupV2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseCgroupV2Path(strings.NewReader(tt.in))
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("path = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestParseMountinfo(t *testing.T) {
	t.Parallel()
	in := `22 1 0:21 / /proc rw,nosuid - proc proc rw
31 23 0:28 / /sys/fs/cgroup rw,relatime shared:9 master:2 - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:10 - cgroup2 cgroup2 rw
612 25 0:4 net:[4026532281] /run/netns/ctr\040a rw shared:297 - nsfs nsfs rw
`
	got, err := parseMountinfo(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []mount{
		{root: "/", point: "/proc", fstype: "proc"},
		{root: "/", point: "/sys/fs/cgroup", fstype: "tmpfs"},
		{root: "/", point: "/sys/fs/cgroup/unified", fstype: "cgroup2"},
		{root: "net:[4026532281]", point: "/run/netns/ctr a", fstype: "nsfs"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}

	if _, err := parseMountinfo(strings.NewReader("1 2 3:4 / /x rw\n")); err == nil {
		t.Error("a line without separator parsed without error")
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]string{
		`/a\040b`:    "/a b",
		`/tab\011`:   "/tab\t",
		`/back\134x`: `/back\x`,
		`/plain`:     "/plain",
		`/short\04`:  `/short\04`,
		`/bad\089`:   `/bad\089`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestFindCgroup2(t *testing.T) {
	t.Parallel()
	pure := []mount{{root: "/", point: "/sys/fs/cgroup", fstype: "cgroup2"}}
	hybrid := []mount{
		{root: "/", point: "/sys/fs/cgroup", fstype: "tmpfs"},
		{root: "/", point: "/sys/fs/cgroup/cpu", fstype: "cgroup"},
		{root: "/", point: "/sys/fs/cgroup/unified", fstype: "cgroup2"},
	}
	container := []mount{{root: "/docker/abc", point: "/sys/fs/cgroup", fstype: "cgroup2"}}
	elsewhere := []mount{{root: "/", point: "/mnt/cg", fstype: "cgroup2"}}

	for name, tc := range map[string]struct {
		mounts []mount
		want   cgroupFS
	}{
		"pure":      {pure, cgroupFS{point: "/sys/fs/cgroup", root: "/"}},
		"hybrid":    {hybrid, cgroupFS{point: "/sys/fs/cgroup/unified", root: "/"}},
		"container": {container, cgroupFS{point: "/sys/fs/cgroup", root: "/docker/abc"}},
	} {
		got, err := findCgroup2(tc.mounts)
		if err != nil || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v", name, got, err, tc.want)
		}
	}
	if _, err := findCgroup2(elsewhere); err == nil || !strings.Contains(err.Error(), "not mounted at /sys/fs/cgroup") {
		t.Errorf("cgroup2 elsewhere: err = %v", err)
	}
}

func TestCgroupRelative(t *testing.T) {
	t.Parallel()
	pure := cgroupFS{point: "/sys/fs/cgroup", root: "/"}
	hybrid := cgroupFS{point: "/sys/fs/cgroup/unified", root: "/"}
	tests := []struct {
		cg      cgroupFS
		in      string
		want    string
		wantErr string
	}{
		{pure, "/sys/fs/cgroup/system.slice/nginx.service", "system.slice/nginx.service", ""},
		{pure, "/sys/fs/cgroup/system.slice/nginx.service/", "system.slice/nginx.service", ""},
		{pure, "/sys/fs/cgroup", "", ""},
		{pure, "system.slice/nginx.service", "system.slice/nginx.service", ""},
		{pure, "/system.slice/nginx.service", "system.slice/nginx.service", ""},
		{pure, "/", "", ""},
		{pure, "../../etc", "etc", ""}, // cannot climb out of the hierarchy
		{pure, "/sys/fs/cgroupx/a", "sys/fs/cgroupx/a", ""},
		{pure, "", "", "empty cgroup path"},
		{hybrid, "/sys/fs/cgroup/unified/user.slice", "user.slice", ""},
		{hybrid, "/user.slice", "user.slice", ""},
		{hybrid, "/sys/fs/cgroup/memory/user.slice", "", "not on the cgroup v2 hierarchy"},
		{hybrid, "/sys/fs/cgroup", "", "not on the cgroup v2 hierarchy"},
	}
	for _, tt := range tests {
		got, err := tt.cg.relative(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%s relative(%q): err = %v, want %q", tt.cg.point, tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%s relative(%q) = %q, %v; want %q", tt.cg.point, tt.in, got, err, tt.want)
		}
	}
}

func TestCgroupDirFor(t *testing.T) {
	t.Parallel()
	pure := cgroupFS{point: "/sys/fs/cgroup", root: "/"}
	sub := cgroupFS{point: "/sys/fs/cgroup", root: "/docker/abc"}
	for _, tt := range []struct {
		cg   cgroupFS
		in   string
		want string
		ok   bool
	}{
		{pure, "/", "/sys/fs/cgroup", true},
		{pure, "/system.slice/x.service", "/sys/fs/cgroup/system.slice/x.service", true},
		{sub, "/docker/abc", "/sys/fs/cgroup", true},
		{sub, "/docker/abc/init.scope", "/sys/fs/cgroup/init.scope", true},
		{sub, "/docker/abcd", "", false},
		{sub, "/", "", false},
	} {
		got, err := tt.cg.dirFor(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("root %s dirFor(%q) = %q, %v; want %q, ok=%v", tt.cg.root, tt.in, got, err, tt.want, tt.ok)
		}
	}
}

func TestDepth(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{"/": 0, "": 0, "/a": 1, "a/b": 2, "/a/b/": 2, "/docker/abc/x": 3} {
		if got := depth(in); got != want {
			t.Errorf("depth(%q) = %d, want %d", in, got, want)
		}
	}
}

func TestParseSocketLink(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		in   string
		want uint32
		ok   bool
	}{
		{"socket:[12345]", 12345, true},
		{"socket:[4294967295]", 4294967295, true},
		{"socket:[4294967296]", 0, false},
		{"socket:[]", 0, false},
		{"socket:[12a]", 0, false},
		{"socket:[12", 0, false},
		{"pipe:[12345]", 0, false},
		{"/dev/null", 0, false},
		{"anon_inode:[eventpoll]", 0, false},
	} {
		got, ok := parseSocketLink([]byte(tt.in))
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseSocketLink(%q) = %d, %v; want %d, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

// fakeProc builds a /proc-like tree: fds maps pid to fd link targets.
func fakeProc(t *testing.T, fds map[int][]string) string {
	t.Helper()
	root := t.TempDir()
	for pid, targets := range fds {
		dir := filepath.Join(root, fmt.Sprint(pid), "fd")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for i, target := range targets {
			// A symlink's target need not exist, which is how
			// "socket:[N]" links look to readlink.
			if err := os.Symlink(target, filepath.Join(dir, fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

func TestSocketOwners(t *testing.T) {
	t.Parallel()
	proc := fakeProc(t, map[int][]string{
		// 20 and 300 share socket 555 (a fork): the lowest pid wins,
		// whatever order /proc lists them in.
		300: {"/dev/null", "socket:[555]", "socket:[999]"},
		20:  {"socket:[555]", "pipe:[555]"},
		31:  {"anon_inode:[eventpoll]", "socket:[777]", "/very/long/path/that/does/not/fit/in/the/buffer/used/for/readlink/targets"},
	})
	// A process that exited between listing and reading has no directory.
	pids, err := listPIDs(proc)
	if err != nil {
		t.Fatal(err)
	}
	if want := []int{20, 31, 300}; !reflect.DeepEqual(pids, want) {
		t.Fatalf("listPIDs = %v, want %v", pids, want)
	}
	pids = append([]int{7}, pids...)

	want := map[uint32]struct{}{555: {}, 777: {}, 888: {}}
	for _, workers := range []int{0, 1, 3} {
		got, warnings := socketOwners(proc, pids, want, workers)
		if len(warnings) != 0 {
			t.Errorf("workers %d: warnings: %v", workers, warnings)
		}
		if exp := map[uint32]uint32{555: 20, 777: 31}; !reflect.DeepEqual(got, exp) {
			t.Errorf("workers %d: owners = %v, want %v", workers, got, exp)
		}
	}
}

func TestProcessReader(t *testing.T) {
	t.Parallel()
	proc := t.TempDir()
	dir := filepath.Join(proc, "4242")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"comm":   "a) b (c\n",
		"stat":   statLine(4242, "a) b (c", 987654),
		"cgroup": "1:name=systemd:/x\n0::/\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// The cgroup id comes from the real hierarchy: "/" is its root,
	// which every cgroup v2 system has.
	r := newProcessReader(proc, selfMountinfo)
	p, err := r.read(4242)
	if r.cgErr != nil {
		t.Logf("no cgroup v2 here (%v): only checking that the id stays 0", r.cgErr)
	}
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != 4242 || p.TID != 4242 {
		t.Errorf("pid/tid = %d/%d", p.PID, p.TID)
	}
	if got := string(p.CommBytes()); got != "a) b (c" {
		t.Errorf("comm = %q", got)
	}
	if p.StartNs != 987654*10_000_000 {
		t.Errorf("start = %d", p.StartNs)
	}
	if p.CgroupPath != "/" {
		t.Errorf("cgroup path = %q", p.CgroupPath)
	}
	if r.cgErr == nil {
		var st = statIno(t, r.cg.point)
		if p.CgroupID != st {
			t.Errorf("cgroup id = %d, want root inode %d", p.CgroupID, st)
		}
	} else if p.CgroupID != 0 {
		t.Errorf("cgroup id = %d without cgroup v2", p.CgroupID)
	}
	if p.Source.String() != "snapshot" {
		t.Errorf("source = %v", p.Source)
	}

	// A process that exited still yields its pid, with an error.
	p, err = r.read(1)
	if err == nil || p.PID != 1 || !p.Known() {
		t.Errorf("missing process: %+v, %v", p, err)
	}
}
