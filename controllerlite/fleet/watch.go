package fleet

import (
	"context"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// Watchers: the faces of the controller (the dashboard's live feed, the
// Home Assistant bridge) follow the fleet without polling it. A watcher
// is told which devices changed, never what they changed to: it reads the
// view with Device, so a slow watcher skips intermediate states instead of
// queueing them, and can never hold up the fleet's loop.

// Watcher receives the ids of devices whose view changed. Create one with
// Fleet.Watch and call Close when done.
type Watcher struct {
	f       *Fleet
	mu      sync.Mutex
	changed map[string]bool
	wake    chan struct{}
}

// Watch returns a watcher of every device. The first Next returns every
// device known now, so a new watcher starts from the whole fleet.
func (f *Fleet) Watch() *Watcher {
	w := &Watcher{f: f, changed: map[string]bool{}, wake: make(chan struct{}, 1)}
	f.mu.Lock()
	for id := range f.view {
		w.changed[id] = true
	}
	f.watchers[w] = true
	f.mu.Unlock()
	w.wake <- struct{}{}
	return w
}

// Next waits until a device changed since the last call and returns the
// changed ids, sorted. It returns ctx's error when ctx is done, and
// ErrStopped when the watcher is closed or the fleet stopped.
func (w *Watcher) Next(ctx context.Context) ([]string, error) {
	for {
		w.mu.Lock()
		if len(w.changed) > 0 {
			ids := slices.Sorted(maps.Keys(w.changed))
			clear(w.changed)
			w.mu.Unlock()
			return ids, nil
		}
		closed := w.changed == nil
		w.mu.Unlock()
		if closed {
			return nil, ErrStopped
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-w.f.stopped:
			w.mu.Lock()
			n := len(w.changed)
			w.mu.Unlock()
			if n == 0 {
				return nil, ErrStopped
			}
		}
	}
}

// Close stops the watcher; a Next waiting returns ErrStopped.
func (w *Watcher) Close() {
	w.f.mu.Lock()
	delete(w.f.watchers, w)
	w.f.mu.Unlock()
	w.mu.Lock()
	w.changed = nil
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// notify marks id changed for every watcher. Called with f.mu held.
func (f *Fleet) notify(id string) {
	for w := range f.watchers {
		w.mu.Lock()
		if w.changed != nil {
			w.changed[id] = true
		}
		w.mu.Unlock()
		select {
		case w.wake <- struct{}{}:
		default:
		}
	}
}

// TelemetrySink is told of every live telemetry message the fleet accepts,
// in the order received, with the properties the controller holds for the
// device at that moment (the setpoint in force is not in telemetry). It
// runs on the fleet's loop: it must not block (the history records a
// sample in memory and writes in the background) and must not keep props.
type TelemetrySink interface {
	Telemetry(id string, at time.Time, t protocol.Telemetry, props protocol.Props)
}
