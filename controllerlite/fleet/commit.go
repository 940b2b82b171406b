package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// Batches: what the loop did since it last woke is stored in one
// transaction, then its Commands are published in order, then readers see
// the result.

type command struct {
	id string
	m  protocol.Message
}

// send queues cmds to be published when the batch is committed; their
// devices' records are marked owed and stored first.
func (f *Fleet) send(cmds []command) {
	for _, c := range cmds {
		f.record(c.id).Owed = true
		f.batch.persist[c.id] = true
		f.batch.pending = append(f.batch.pending, c)
	}
}

// commit ends a batch: it stores every record the batch changed, with the
// Commands' devices marked owed, in one transaction, then publishes the
// Commands in the order they were made and clears the marks of those the
// broker took. Nothing is published if the store refused the write: a
// Command must never carry a clock that a crash could forget. A received
// Event's new state is stored here too, before any Command that depends
// on it; until then the broker still retains the Event.
func (f *Fleet) commit(ctx context.Context) error {
	defer f.showTouched()
	if len(f.batch.persist) == 0 && len(f.batch.pending) == 0 {
		return nil
	}
	began := f.opts.Now()
	defer func() { f.opts.Meter.Committed(f.opts.Now().Sub(began)) }()
	recs := make([]store.Device, 0, len(f.batch.persist))
	for _, id := range slices.Sorted(maps.Keys(f.batch.persist)) {
		rec := f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		recs = append(recs, *rec)
	}
	cmds := f.batch.pending
	f.batch.pending = nil
	clear(f.batch.persist)
	if err := f.put(recs); err != nil {
		for _, r := range recs {
			f.dirty[r.ID] = true
		}
		if !errors.Is(err, errMerged) {
			f.retry.failed = true
		}
		if errors.Is(err, errMerged) {
			// Another instance wrote first (shard.go): its record is
			// merged and the batch's Commands go out after, counted
			// from it.
			f.log.Info("another instance wrote these devices first: merged, storing again", "devices", len(recs), "commands", len(cmds), "error", err)
			for _, c := range cmds {
				f.touch(c.id)
			}
			return fmt.Errorf("store: %w", err)
		}
		if len(cmds) == 0 {
			f.log.Error("store the received state", "devices", len(recs), "error", err)
			return fmt.Errorf("store: %w: %w", ErrStore, err)
		}
		f.log.Error("store refused the write: commands not published", "commands", len(cmds), "error", err)
		for _, c := range cmds {
			f.touch(c.id)
		}
		return fmt.Errorf("persist before publish: %w: %w", ErrStore, err)
	}
	for _, r := range recs {
		delete(f.dirty, r.ID)
	}
	if len(cmds) == 0 {
		return nil
	}
	if f.pub == nil {
		for _, c := range cmds {
			f.log.Info("broker link down: command owed", "device", c.id, "vc", c.m.VC)
			f.touch(c.id)
		}
		return nil
	}
	// Every Command carries the device's whole state, so the outcome of
	// a device's last Command decides whether it still owes one.
	// A batch publishes at most maxPublishPerBatch Commands; the rest, in
	// order, wait for the next turn of the loop, which first takes what
	// arrived meanwhile. Publishing waits for the broker's acknowledgements:
	// 1,000 owed Commands at once (a controller's writes made while the
	// broker was down) held every returning device's Event behind them for
	// ~3 s on Mosquitto. A device with a Command still waiting stays owed.
	later := map[string]bool{}
	if len(cmds) > maxPublishPerBatch {
		f.batch.pending = append(slices.Clone(cmds[maxPublishPerBatch:]), f.batch.pending...)
		cmds = cmds[:maxPublishPerBatch]
		for _, c := range f.batch.pending {
			later[c.id] = true
		}
		f.q.Push(func(context.Context) {}) // wake the loop for the rest
	}
	devices := f.publishAll(ctx, cmds)
	for id, ok := range devices {
		f.recs[id].Owed = !ok || later[id]
		f.touch(id)
	}
	var sent []store.Device
	for _, id := range slices.Sorted(maps.Keys(devices)) {
		if rec := f.recs[id]; !rec.Owed {
			sent = append(sent, *rec)
		}
	}
	if err := f.put(sent); err != nil {
		// The owed marks stay on disk: after a restart these Commands go
		// out once more, which is harmless.
		f.log.Warn("store: clear owed marks", "error", err)
		for _, r := range sent {
			f.dirty[r.ID] = true
		}
	}
	return nil
}

// maxPublishPerBatch bounds the Commands one commit publishes (see commit).
const maxPublishPerBatch = 256

// publishParallel bounds the devices whose Commands are in flight at once.
const publishParallel = 64

// publishAll publishes cmds, each device's in the order made, different
// devices' concurrently, and returns the outcome of each device's last
// Command. Each publish waits for the broker's acknowledgement, and the
// embedded broker stores a retained message before it acknowledges: one
// after another, a returning fleet's greetings waited for a store commit
// each (about 2 ms a device). Concurrent, they share the broker's commits.
// Only the order per device matters: a device's Commands go to its own
// retained topic, and each carries its whole state.
func (f *Fleet) publishAll(ctx context.Context, cmds []command) map[string]bool {
	per := map[string][]command{}
	var order []string
	for _, c := range cmds {
		if _, ok := per[c.id]; !ok {
			order = append(order, c.id)
		}
		per[c.id] = append(per[c.id], c)
	}
	out := make(map[string]bool, len(order))
	if len(order) == 1 {
		for _, c := range cmds {
			out[c.id] = f.publish(ctx, c)
		}
		return out
	}
	var (
		mu  sync.Mutex
		wg  sync.WaitGroup
		sem = make(chan struct{}, publishParallel)
	)
	for _, id := range order {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			ok := false
			for _, c := range per[id] {
				ok = f.publish(ctx, c)
			}
			mu.Lock()
			out[id] = ok
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

// publish sends one Command and waits for the broker's acknowledgement;
// safe for concurrent use.
func (f *Fleet) publish(ctx context.Context, c command) bool {
	if !f.mayPublish() {
		f.log.Warn("not publishing: this instance's lease is not renewed (command owed)", "device", c.id, "vc", c.m.VC)
		return false
	}
	payload, err := c.m.Encode()
	if err != nil {
		f.log.Error("encode command", "device", c.id, "error", err)
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, f.opts.PublishTimeout)
	defer cancel()
	topic := protocol.Topic(f.root, c.id, protocol.KindCmd)
	if err := f.pub.Publish(ctx, topic, payload, 1, true); err != nil {
		f.log.Warn("publish command failed: owed until the link is back", "device", c.id, "vc", c.m.VC, "error", err)
		return false
	}
	f.count.published.Add(1)
	f.log.Debug("command published", "device", c.id, "vc", c.m.VC, "props", c.m.Props)
	return true
}

// sendOwed sends every owed Command again: a Send with the current clock
// and properties, which carries every write the lost one did.
func (f *Fleet) sendOwed() {
	if f.pub == nil || !f.ctrl.IsReady() {
		return
	}
	// A device whose Command still waits its turn in the batch (a commit
	// publishes at most maxPublishPerBatch) is owed, and already on its
	// way: queueing another would grow the batch at every flush faster
	// than it drains.
	queued := make(map[string]bool, len(f.batch.pending))
	for _, c := range f.batch.pending {
		queued[c.id] = true
	}
	var cmds []command
	for _, id := range slices.Sorted(maps.Keys(f.recs)) {
		if f.recs[id].Owed && f.acts(id) && !queued[id] {
			// Online is the controller's Send for a known device once
			// ready: a Command with its current clock and properties.
			if m := f.ctrl.Online(id); m != nil {
				cmds = append(cmds, command{id, *m})
			}
		}
	}
	if len(cmds) > 0 {
		f.log.Info("sending owed commands", "devices", len(cmds))
		f.send(cmds)
	}
}

// flush writes the records changed since the last flush.
func (f *Fleet) flush() {
	if len(f.dirty) == 0 {
		f.retry.failed = false
		return
	}
	recs := make([]store.Device, 0, len(f.dirty))
	for _, id := range slices.Sorted(maps.Keys(f.dirty)) {
		rec := f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		recs = append(recs, *rec)
	}
	if err := f.put(recs); err != nil {
		f.log.Error("store: flush", "devices", len(recs), "error", err)
		if !errors.Is(err, errMerged) {
			f.retry.failed = true
		}
		return
	}
	clear(f.dirty)
	f.retry.failed = false
}

// storeRetry: what the store refused (PostgreSQL restarted, a full disk)
// is written again 250 ms later, then at twice the wait up to the flush
// interval, until a flush succeeds: a store that comes back is in use again
// within a fraction of a second instead of at the next flush, and one that
// stays away is not tried more often than once a flush interval for long.
type storeRetry struct {
	timer  *time.Timer
	next   time.Duration
	armed  bool
	failed bool // the last write of the records refused
}

// storeRetryFirst is the first wait of storeRetry.
const storeRetryFirst = 250 * time.Millisecond

// armRetry schedules the next write of what the store refused, if any.
func (f *Fleet) armRetry() {
	r := &f.retry
	if !r.failed {
		r.next = 0
		return
	}
	if r.armed {
		return
	}
	r.next = min(max(2*r.next, storeRetryFirst), f.opts.FlushInterval)
	r.timer.Reset(r.next)
	r.armed = true
}

// put stores recs: with Put, or for a shared fleet with PutBased.
func (f *Fleet) put(recs []store.Device) error {
	if f.sh != nil {
		return f.putShared(recs)
	}
	return f.st.Put(recs...)
}
