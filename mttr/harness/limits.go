package harness

import (
	"fmt"
	"syscall"
)

// RaiseFileLimit raises this process's open-file limit (RLIMIT_NOFILE) to
// at least want, for the thousands of devices of a big run: each holds its
// connection and its state directory's lock, and the broker a connection
// each. Go already raises the soft limit to the hard one at start; as root
// the hard limit is raised too. Children (Mosquitto, the embedded broker)
// inherit it. It fails, saying what to do, when want is out of reach.
func RaiseFileLimit(want uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return fmt.Errorf("read the open-file limit: %w", err)
	}
	if lim.Cur >= want {
		return nil
	}
	next := lim
	next.Cur = want
	if next.Max < want {
		next.Max = want
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &next); err != nil {
		return fmt.Errorf("open-file limit %d (hard %d), %d needed for this many devices: %w (run as root, or raise it with ulimit -n)", lim.Cur, lim.Max, want, err)
	}
	return nil
}
