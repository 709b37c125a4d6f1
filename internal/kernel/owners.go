package kernel

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/conntracer/conntracer/internal/events"
)

// maxFDScanners bounds the goroutines reading /proc/PID/fd. The scan is
// mostly readlink system calls, which run in parallel in the kernel; a few
// workers divide its time on a many-core machine without swamping it.
const maxFDScanners = 4

// socketOwners maps each socket inode in want to the process that holds it
// open, by reading every /proc/PID/fd/N link ("socket:[INODE]") once.
//
// A socket shared by several processes (inherited across fork, or passed
// over a unix socket) is attributed to the lowest pid: usually the parent,
// the one that created it, and in any case a stable choice.
//
// Processes that exit during the scan are skipped silently: their fds are
// closed, so they own nothing any more. Processes whose fds we may not read
// are counted in one warning.
//
// workers bounds the goroutines used; 0 picks a default from GOMAXPROCS.
func socketOwners(procDir string, pids []int, want map[uint32]struct{}, workers int) (map[uint32]uint32, []error) {
	pids = slices.Sorted(slices.Values(pids))
	if workers <= 0 {
		workers = min(runtime.GOMAXPROCS(0), maxFDScanners)
	}
	workers = min(workers, len(pids)/256+1)
	results := make([]fdScan, workers)
	var wg sync.WaitGroup
	for w := range workers {
		// Contiguous chunks of the sorted pids: each worker keeps the
		// first owner it meets, the lowest pid of its chunk, and the
		// merge below keeps the lowest of those.
		chunk := pids[w*len(pids)/workers : (w+1)*len(pids)/workers]
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[w] = scanFDs(procDir, chunk, want)
		}()
	}
	wg.Wait()

	owners := make(map[uint32]uint32, len(want))
	var warnings []error
	var denied []int
	for _, r := range results {
		for ino, pid := range r.owners {
			if cur, ok := owners[ino]; !ok || pid < cur {
				owners[ino] = pid
			}
		}
		warnings = append(warnings, r.warnings...)
		denied = append(denied, r.denied...)
	}
	if len(denied) > 0 {
		slices.Sort(denied)
		warnings = append(warnings, deniedError(procDir, "fds", "owners of their sockets unknown", denied))
	}
	return owners, warnings
}

// fdScan is what one worker of socketOwners found.
type fdScan struct {
	owners   map[uint32]uint32
	warnings []error
	denied   []int // processes whose fds we may not read
}

// scanFDs reads the fd links of pids, in order, keeping the first process
// seen holding each wanted socket.
func scanFDs(procDir string, pids []int, want map[uint32]struct{}) fdScan {
	r := fdScan{owners: map[uint32]uint32{}}
	var buf [64]byte // "socket:[4294967295]" and "anon_inode:[eventpoll]" fit; longer targets are not sockets
	for _, pid := range pids {
		dir := filepath.Join(procDir, strconv.Itoa(pid), "fd")
		f, err := os.Open(dir)
		if err != nil {
			switch {
			case errors.Is(err, fs.ErrPermission):
				r.denied = append(r.denied, pid)
			case errors.Is(err, fs.ErrNotExist), errors.Is(err, unix.ESRCH):
			default:
				r.warnings = append(r.warnings, fmt.Errorf("list fds of pid %d: %w", pid, err))
			}
			continue
		}
		names, err := f.Readdirnames(-1)
		if err != nil {
			f.Close()
			if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ESRCH) {
				r.warnings = append(r.warnings, fmt.Errorf("list fds of pid %d: %w", pid, err))
			}
			continue
		}
		// Readlinkat on the open directory saves building and resolving
		// a full path per fd, which is most of the cost of this scan.
		dfd := int(f.Fd())
		for _, name := range names {
			n, err := unix.Readlinkat(dfd, name, buf[:])
			if err != nil || n >= len(buf) {
				continue // fd closed meanwhile, or a long path: not a socket
			}
			ino, ok := parseSocketLink(buf[:n])
			if !ok {
				continue
			}
			if _, wanted := want[ino]; !wanted {
				continue
			}
			if _, taken := r.owners[ino]; !taken {
				r.owners[ino] = uint32(pid)
			}
		}
		f.Close()
	}
	return r
}

// processReader reads what events.Process needs from /proc, caching cgroup
// ids by path because many processes share a cgroup.
type processReader struct {
	procDir string
	cg      cgroupFS
	cgErr   error // why cgroup ids cannot be resolved; reported once
	cgIDs   map[string]uint64
}

func newProcessReader(procDir, mountinfo string) *processReader {
	cg, err := loadCgroupFS(mountinfo)
	return &processReader{procDir: procDir, cg: cg, cgErr: err, cgIDs: map[string]uint64{}}
}

// read returns the owner record of process pid. It fills what it can: a
// process that exits half way still gets its pid (and whatever was read),
// with an error saying what is missing.
func (r *processReader) read(pid uint32) (events.Process, error) {
	p := events.Process{PID: pid, TID: pid, Source: events.OwnerSnapshot}
	dir := filepath.Join(r.procDir, strconv.FormatUint(uint64(pid), 10))
	var errs []error

	if comm, err := os.ReadFile(filepath.Join(dir, "comm")); err != nil {
		errs = append(errs, err)
	} else {
		p.SetComm(string(bytes.TrimSuffix(comm, []byte("\n"))))
	}

	if f, err := os.Open(filepath.Join(dir, "stat")); err != nil {
		errs = append(errs, err)
	} else {
		start, err := parseStatStartTime(f)
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("parse %s/stat: %w", dir, err))
		}
		p.StartNs = start
	}

	if f, err := os.Open(filepath.Join(dir, "cgroup")); err != nil {
		errs = append(errs, err)
	} else {
		cgPath, err := parseCgroupV2Path(f)
		f.Close()
		switch {
		case errors.Is(err, errNoCgroupV2):
			// A cgroup v1 only system: there is no id to give.
		case err != nil:
			errs = append(errs, fmt.Errorf("parse %s/cgroup: %w", dir, err))
		default:
			p.CgroupPath = cgPath
			id, err := r.cgroupID(cgPath)
			if err != nil {
				errs = append(errs, err)
			}
			p.CgroupID = id
		}
	}

	if err := errors.Join(errs...); err != nil {
		return p, fmt.Errorf("read owner pid %d: %w", pid, err)
	}
	return p, nil
}

// cgroupID resolves a /proc/PID/cgroup path to its id. A cgroup removed
// since the process was listed fails here and is reported.
func (r *processReader) cgroupID(cgPath string) (uint64, error) {
	if r.cgErr != nil {
		return 0, nil // reported once by the caller, not per process
	}
	if id, ok := r.cgIDs[cgPath]; ok {
		return id, nil
	}
	dir, err := r.cg.dirFor(cgPath)
	if err != nil {
		return 0, err
	}
	id, err := r.cg.dirID(dir)
	if err != nil {
		return 0, fmt.Errorf("cgroup id of %q: %w", cgPath, err)
	}
	r.cgIDs[cgPath] = id
	return id, nil
}
