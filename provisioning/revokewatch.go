package provisioning

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultRevocationPoll is how often a running controller looks at its
// revocation list for a change: `pki revoke` takes effect within it.
const DefaultRevocationPoll = 250 * time.Millisecond

// RevocationWatch keeps the revocation lists of some directories (the
// controller's data directory and its CA's) current in memory, as one:
// Run reads them again whenever a file's size or time changes, and calls
// OnChange after each new list. A list that does not read keeps the
// previous one (logged): a half-edited file never un-revokes anything.
type RevocationWatch struct {
	dirs []string
	log  *slog.Logger
	list atomic.Pointer[Revocations]

	mu       sync.Mutex
	onChange []func(*Revocations)
	stamp    fileStamp // what Run last loaded
	kick     chan struct{}

	freshMu    sync.Mutex
	freshStamp atomic.Pointer[fileStamp] // what Fresh last loaded
}

// fileStamp is the size and time of every file, as text.
type fileStamp string

// NewRevocationWatch loads the lists of dirs now ("" and repeats skipped).
func NewRevocationWatch(log *slog.Logger, dirs ...string) (*RevocationWatch, error) {
	if log == nil {
		log = slog.Default()
	}
	w := &RevocationWatch{log: log, kick: make(chan struct{}, 1)}
	seen := map[string]bool{}
	for _, d := range dirs {
		if d != "" && !seen[filepath.Clean(d)] {
			seen[filepath.Clean(d)] = true
			w.dirs = append(w.dirs, d)
		}
	}
	w.stamp = w.stat()
	st := w.stamp
	w.freshStamp.Store(&st)
	l, err := LoadRevocationsFrom(w.dirs...)
	if err != nil {
		return nil, err
	}
	w.list.Store(l)
	return w, nil
}

// List is the list in force.
func (w *RevocationWatch) List() *Revocations { return w.list.Load() }

// Fresh is the list as the file says now: it looks at the file (one stat)
// and reads it again when it changed, so a decision right after `pki
// revoke` (a CONNECT, a renewal) does not wait for Run's next poll. Run
// still notices the change and calls OnChange.
//
// The stat is made outside the lock: every TLS handshake of a returning
// fleet asks, 128 at a time, and they queued on the lock for a stat each.
func (w *RevocationWatch) Fresh() *Revocations {
	st := w.stat()
	if p := w.freshStamp.Load(); p != nil && *p == st {
		return w.list.Load()
	}
	w.freshMu.Lock()
	defer w.freshMu.Unlock()
	if p := w.freshStamp.Load(); p != nil && *p == st {
		return w.list.Load() // loaded meanwhile
	}
	l, err := LoadRevocationsFrom(w.dirs...)
	if err != nil {
		w.log.Error("revocation list not reloaded: the previous one stays in force", "err", err)
		return w.list.Load()
	}
	w.list.Store(l)
	w.freshStamp.Store(&st)
	return l
}

// OnChange adds a function called (on Run's goroutine) with each new list.
func (w *RevocationWatch) OnChange(fn func(*Revocations)) {
	w.mu.Lock()
	w.onChange = append(w.onChange, fn)
	w.mu.Unlock()
}

// Reload asks Run to read the file now (after this process wrote it).
func (w *RevocationWatch) Reload() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

func (w *RevocationWatch) stat() fileStamp {
	var b strings.Builder
	for _, d := range w.dirs {
		if fi, err := os.Stat(filepath.Join(d, RevokedFile)); err == nil {
			fmt.Fprintf(&b, "%d/%d;", fi.Size(), fi.ModTime().UnixNano())
		} else {
			b.WriteString("-;")
		}
	}
	return fileStamp(b.String())
}

// Run polls every interval (DefaultRevocationPoll when 0) until ctx ends.
func (w *RevocationWatch) Run(ctx context.Context, interval time.Duration) {
	if interval <= 0 {
		interval = DefaultRevocationPoll
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		force := false
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-w.kick:
			force = true
		}
		st := w.stat()
		if !force && st == w.stamp {
			continue
		}
		w.stamp = st
		l, err := LoadRevocationsFrom(w.dirs...)
		if err != nil {
			w.log.Error("revocation list not reloaded: the previous one stays in force", "err", err)
			continue
		}
		w.list.Store(l)
		w.log.Info("revocation list loaded", "entries", len(l.Entries))
		w.mu.Lock()
		fns := append([]func(*Revocations){}, w.onChange...)
		w.mu.Unlock()
		for _, fn := range fns {
			fn(l)
		}
	}
}
