//go:build unix

package history

import (
	"errors"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
)

// checking opens the history in dir while its file is locked, so that
// Open gives up waiting after CheckWait and the check goes on in the
// background. The test must release the lock within the store's lock
// timeout (2 s), or the check ends with ErrLocked.
func checking(t *testing.T, dir string, clk *clock, l *logs) (*History, func()) {
	t.Helper()
	release := testenv.HoldFileLock(t, filepath.Join(dir, FileName))
	h, err := Open(dir, Options{Now: clk.Now, CheckWait: 10 * time.Millisecond, Logger: slog.New(l)})
	if err != nil {
		t.Fatalf("Open while the file is being checked: %v", err)
	}
	t.Cleanup(func() { h.Close() })
	if ok, err := h.usable(); ok || err != nil {
		t.Fatalf("history usable before its check ended: %v %v", ok, err)
	}
	if !l.has("checking every page of the file in the background") {
		t.Errorf("no log line says the check goes on in the background: %q", l.all())
	}
	return h, release
}

// TestCheckInTheBackground: a history whose check outlasts CheckWait lets
// the controller start. Meanwhile samples wait in the buffer, a query is
// ErrChecking and a device's deletion is remembered; when the check ends
// the deletion is applied first and the samples are written.
func TestCheckInTheBackground(t *testing.T) {
	dir := t.TempDir()
	clk := &clock{t: base}
	h := open(t, dir, clk, Options{})
	for _, id := range []string{"gone", "kept"} {
		recordAll(t, h, id, base, []in{{0, 20, 20, true, false, ""}, {time.Minute, 21, 20, false, false, ""}})
	}
	h.Close()

	l := &logs{}
	h, release := checking(t, dir, clk, l)
	(in{2 * time.Minute, 22, 20, false, false, ""}).record(h, "kept", base)
	(in{2 * time.Minute, 22, 20, false, false, ""}).record(h, "gone", base)
	if err := h.Flush(); err != nil {
		t.Fatalf("Flush while checking: %v", err)
	}
	if s := h.Stats(); s.Pending != 2 || s.Written != 0 || s.Dropped != 0 || !s.Checking || s.Failed {
		t.Fatalf("while checking: %+v, want 2 samples waiting, checking", s)
	}
	if _, err := h.Query("kept", base, base.Add(time.Hour), time.Minute); !errors.Is(err, ErrChecking) {
		t.Fatalf("Query while checking: %v, want ErrChecking", err)
	}
	if err := h.Delete("gone"); err != nil {
		t.Fatalf("Delete while checking: %v", err)
	}
	if s := h.Stats(); s.Pending != 1 {
		t.Fatalf("after Delete: %d samples waiting, want the other device's 1", s.Pending)
	}
	release()
	<-h.ready
	if h.openErr != nil {
		t.Fatalf("check: %v", h.openErr)
	}
	if !boltKit.has(t, h, "kept") || boltKit.has(t, h, "gone") {
		t.Errorf("after the check: kept %v, gone %v; want only kept", boltKit.has(t, h, "kept"), boltKit.has(t, h, "gone"))
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if s := h.Stats(); s.Pending != 0 || s.Written != 1 || s.Checking || s.Failed {
		t.Fatalf("after the check: %+v, want the sample written", s)
	}
	res, err := h.Query("kept", base, base.Add(time.Hour), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Points) != 3 || res.Points[2].TempMean != 22 {
		t.Fatalf("kept's points after the check: %+v, want 3 ending at 22 °C", res.Points)
	}
	if !l.has("check done") {
		t.Errorf("no log line says the check is done: %q", l.all())
	}
}

// TestCorruptFoundInTheBackground: a file found corrupt after Open
// returned leaves the controller running without history. The error and
// its cure are logged, queries and writes fail with it, samples are
// counted as lost rather than kept, and Close succeeds.
func TestCorruptFoundInTheBackground(t *testing.T) {
	dir, clk := garbledHistory(t)
	l := &logs{}
	h, release := checking(t, dir, clk, l)
	(in{time.Minute, 21, 20, false, false, ""}).record(h, "d1", base)
	release()
	<-h.ready
	for _, want := range []string{"ERROR history: the file cannot be used", "corrupt", "empty telemetry history"} {
		if !l.has(want) {
			t.Errorf("no log line with %q: %q", want, l.all())
		}
	}
	if _, err := h.Query("d1", base, base.Add(time.Hour), time.Minute); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("Query of a corrupt history: %v", err)
	}
	if err := h.Flush(); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("Flush into a corrupt history: %v", err)
	}
	if s := h.Stats(); s.Pending != 0 || s.Dropped != 1 || !s.Failed || s.Checking {
		t.Errorf("after the Flush: %+v, want the sample counted as lost", s)
	}
	if err := h.Delete("d1"); err == nil || !strings.Contains(err.Error(), "corrupt") {
		t.Errorf("Delete in a corrupt history: %v", err)
	}
	if err := h.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}
