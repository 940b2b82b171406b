package harness

import (
	"context"
	"errors"
	"maps"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
)

// seen is a device as the controller holds it, and when the harness
// learned that state: a resync is timed from the moment the controller's
// view changed, not from when the harness next looked. Reading the whole
// fleet every poll told a change late by up to the poll interval plus the
// read itself (1-2.5 s at 10,000 devices under load, a JSON document of
// every device), and cost the controller the CPU of those documents.
type seen struct {
	fleet.Device
	at time.Time
}

// when is the time the state was learned, or now for a view read by a
// poll.
func (s seen) when(now time.Time) time.Time {
	if s.at.IsZero() || s.at.After(now) {
		return now
	}
	return s.at
}

// feed is a controller's fleet kept up to date from its change feed,
// stamped with the time each change arrived.
type feed struct {
	mu   sync.Mutex
	live bool
	err  error // why it is not live
	devs map[string]seen
}

func newFeed() *feed {
	return &feed{err: errors.New("the controller's live feed is not open yet"), devs: map[string]seen{}}
}

// devices returns the fleet as last heard; an error while the feed is
// down (the controller unreachable), as a read of it would.
func (f *feed) devices() (map[string]seen, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.live {
		return nil, f.err
	}
	return maps.Clone(f.devs), nil
}

func (f *feed) apply(ch api.Change, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case ch.Snapshot != nil:
		clear(f.devs)
		for _, d := range ch.Snapshot {
			f.devs[d.ID] = seen{d, at}
		}
		f.live = true
	case ch.Device != nil:
		f.devs[ch.Device.ID] = seen{*ch.Device, at}
	case ch.Removed != "":
		delete(f.devs, ch.Removed)
	}
}

func (f *feed) down(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.live = false
	f.err = err
}

// followAPI keeps f from the controller's live feed (GET /api/events)
// until ctx is done, opening it again every 20 ms while the controller is
// down (the embedded broker's faults kill it).
func (f *feed) followAPI(ctx context.Context, c *api.Client) {
	for ctx.Err() == nil {
		err := c.Follow(ctx, func(ch api.Change) { f.apply(ch, time.Now()) })
		f.down(err)
		t := time.NewTimer(20 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
	}
}

// followFleet keeps f from an in-process fleet's change feed until ctx is
// done.
func (f *feed) followFleet(ctx context.Context, fl *fleet.Fleet) {
	w := fl.Watch()
	defer w.Close()
	for {
		ids, err := w.Next(ctx)
		if err != nil {
			f.down(err)
			return
		}
		at := time.Now()
		f.mu.Lock()
		for _, id := range ids {
			if d, ok := fl.Device(id); ok {
				f.devs[id] = seen{d, at}
			} else {
				delete(f.devs, id)
			}
		}
		f.live = true
		f.mu.Unlock()
	}
}
