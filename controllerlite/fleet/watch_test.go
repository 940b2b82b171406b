package fleet

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// TestWatch: a watcher starts with the whole fleet, then hears of each
// device whose view changed (an event, a status, a remote write), coalesced
// while it is not reading, and stops with ErrStopped when closed.
func TestWatch(t *testing.T) {
	e := newEnv(t, "embedded", nil)
	d1 := e.device(t, "d1")
	d1.event(t, protocol.Clock{0, 1}, sp20heat)
	r := e.start(t.TempDir())
	r.waitReady(t)
	r.waitDevice(t, "d1", "retained event", func(d Device) bool { return d.VC == protocol.Clock{1, 1} })

	w := r.Watch()
	next := func(what string) []string {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
		defer cancel()
		ids, err := w.Next(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		return ids
	}
	if ids := next("first"); !slices.Equal(ids, []string{"d1"}) {
		t.Fatalf("first Next = %v, want the whole fleet [d1]", ids)
	}

	d2 := e.device(t, "d2")
	d2.status(t, true)
	if ids := next("d2 online"); !slices.Contains(ids, "d2") {
		t.Fatalf("Next = %v, want d2", ids)
	}

	// Two changes while nobody reads: one Next names both.
	if _, err := r.Set(ctx, "d1", map[string]any{"setpoint_c": 21.5}); err != nil {
		t.Fatal(err)
	}
	d2.status(t, false)
	r.waitDevice(t, "d2", "offline", func(d Device) bool { return !d.Online })
	seen := map[string]bool{}
	for !seen["d1"] || !seen["d2"] {
		for _, id := range next("coalesced") {
			seen[id] = true
		}
	}

	// Nothing changed: Next waits until its context ends.
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if ids, err := w.Next(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("idle Next = %v, %v; want the context's deadline", ids, err)
	}

	w.Close()
	if _, err := w.Next(context.Background()); !errors.Is(err, ErrStopped) {
		t.Fatalf("Next after Close: %v, want ErrStopped", err)
	}
}
