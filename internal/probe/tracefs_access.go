package probe

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// tracefsMagic is TRACEFS_MAGIC (include/uapi/linux/magic.h), the f_type
// statfs reports for a tracefs mount.
const tracefsMagic = 0x74726163

// tracefsUnreadable tells a mounted but unreadable tracefs from one that is
// not mounted. tracefs is mounted mode 0700 by default: a non-root tracer
// cannot see /sys/kernel/tracing/events and was told "tracefs is not
// mounted", and with CAP_SYS_ADMIN tried to mount it again (EBUSY). statfs
// needs no permission on the directory itself. It returns nil when tracefs
// is not mounted there (mounting is the remedy) and an error saying what
// to grant when it is mounted but events is not readable.
func tracefsUnreadable(statErr error) error {
	var fs unix.Statfs_t
	if err := unix.Statfs(tracefsPath, &fs); err != nil || fs.Type != tracefsMagic {
		return nil
	}
	if !errors.Is(statErr, os.ErrPermission) {
		return fmt.Errorf("tracefs is mounted at %s but %s/events cannot be read (%w)", tracefsPath, tracefsPath, statErr)
	}
	mode := ""
	if st, err := os.Stat(tracefsPath); err == nil {
		mode = fmt.Sprintf(" (mode %04o)", st.Mode().Perm())
	}
	return fmt.Errorf("tracefs is mounted at %s%s but not readable by uid %d: run as root, grant CAP_DAC_READ_SEARCH, or remount it readable (mount -o remount,mode=755 %s)",
		tracefsPath, mode, os.Geteuid(), tracefsPath)
}
