package harness

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
)

// ProfileFlag is the embedded-serve flag (first, before serve's own) that
// profiles the child. It is mttr's, not controllerlite serve's: the harness
// kills the child with SIGKILL every cycle, so a profile written at exit
// would never be written. Instead the child profiles in slices of
// profileSlice, each written to DIR/cpu-PID-SEQ.pprof (merge them with
// `go tool pprof -top DIR/cpu-*.pprof`), and snapshots its cumulative
// block, mutex and heap profiles (DIR/block-PID.pprof ...) at the end of
// every slice: a kill loses at most the last slice.
const ProfileFlag = "--profile-dir"

// profileSlice is how long one CPU profile file covers.
const profileSlice = 2 * time.Second

// StartProfiles profiles this process into dir until ctx is done (and
// once more when it is). It turns on block and mutex profiling.
func StartProfiles(ctx context.Context, dir, name string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile: %w", err)
	}
	runtime.SetBlockProfileRate(int(100 * time.Microsecond)) // a sample per 100 µs blocked
	runtime.SetMutexProfileFraction(10)
	pid := os.Getpid()
	seq := 0
	var cur *os.File
	begin := func() {
		seq++
		f, err := os.Create(filepath.Join(dir, fmt.Sprintf("cpu-%s-%d-%04d.pprof", name, pid, seq)))
		if err != nil {
			return
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			f.Close()
			return
		}
		cur = f
	}
	stopCPU := func() {
		if cur != nil {
			pprof.StopCPUProfile()
			cur.Close()
			cur = nil
		}
	}
	// snapshots come after the next CPU slice has begun, so that the CPU
	// profiles cover the run without gaps: a goroutine profile of 50,000
	// goroutines takes long enough to hide a whole return otherwise. What
	// the snapshots cost shows in the CPU profile, under runtime/pprof.
	snapshots := func() {
		for _, p := range []string{"block", "mutex", "heap", "goroutine"} {
			writeProfile(filepath.Join(dir, fmt.Sprintf("%s-%s-%d.pprof", p, name, pid)), p)
		}
	}
	done := make(chan struct{})
	begin()
	go func() {
		defer close(done)
		t := time.NewTicker(profileSlice)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				stopCPU()
				snapshots()
				return
			case <-t.C:
				stopCPU()
				begin()
				snapshots()
			}
		}
	}()
	return func() { <-done }, nil
}

// writeProfile writes a named runtime profile atomically: a process
// killed while writing leaves the previous snapshot.
func writeProfile(path, name string) {
	if p := pprof.Lookup(name); p != nil {
		atomicfile.Write(path, 0o644, func(w io.Writer) error { return p.WriteTo(w, 0) })
	}
}
