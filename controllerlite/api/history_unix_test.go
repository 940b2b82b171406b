//go:build unix

package api

import (
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/internal/testenv"
)

// TestHistoryChecking: while the history's file is checked after a start,
// a query is 503 with Retry-After, which the dashboard's chart retries. A
// real history is held checking by its file's lock, as another process
// would hold it, for less than the store's lock timeout (2 s).
func TestHistoryChecking(t *testing.T) {
	dir := t.TempDir()
	h, err := history.Open(dir, history.Options{Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	h.Close()
	release := testenv.HoldFileLock(t, filepath.Join(dir, history.FileName))
	if h, err = history.Open(dir, history.Options{Logger: quiet, CheckWait: 10 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() }) // after the lock is released: cleanups run last first
	f, _ := newFleet(t, true)
	hdl := NewHandler(f, Options{Logger: quiet, History: h})
	get := func() *httptest.ResponseRecorder {
		w := httptest.NewRecorder()
		hdl.ServeHTTP(w, httptest.NewRequest("GET", "/api/devices/d1/history", nil))
		return w
	}
	if w := get(); w.Code != http.StatusServiceUnavailable || w.Header().Get("Retry-After") != "5" || !strings.Contains(w.Body.String(), "being checked") {
		t.Fatalf("%d Retry-After %q %s; want 503, 5 and the reason", w.Code, w.Header().Get("Retry-After"), w.Body)
	}
	release()
	testenv.WaitFor(t, "the history's check to end", func() bool { return !h.Stats().Checking })
	if w := get(); w.Code != http.StatusOK {
		t.Fatalf("after the check: %d %s", w.Code, w.Body)
	}
}
