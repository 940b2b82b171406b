package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// Batches: what the loop did since it last woke is stored in one
// transaction, then readers see the result and its Commands go to the
// outbox, which publishes them in order (outbox.go).

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
		f.batch.sends[c.id] = true
	}
}

// commit ends a batch: it stores every record the batch changed, with the
// Commands' devices marked owed, in one transaction, then hands the
// Commands to the outbox in the order they were made (the marks of those
// the broker takes are cleared as it does). Nothing is published if the
// store refused the write: a Command must never carry a clock that a
// crash could forget. A received Event's new state is stored here too,
// before any Command that depends on it; until then the broker still
// retains the Event.
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
	clear(f.batch.sends)
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
	// The Commands go to the outbox (outbox.go): the loop does not wait
	// for the broker to take them.
	f.queue(ctx, cmds)
	return nil
}

// publishParallel bounds the Commands in flight at once (outbox.go): a
// returning fleet's greetings share the embedded broker's store commits,
// and the broker's queue does not grow past what it takes.
const publishParallel = 64

// publish sends one Command through p and waits for the broker's
// acknowledgement; safe for concurrent use.
func (f *Fleet) publish(ctx context.Context, p Publisher, c command) bool {
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
	if err := p.Publish(ctx, topic, payload, 1, true); err != nil {
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
	// A device whose Command is in the batch or the outbox is owed, and
	// already on its way: another would only repeat it.
	var cmds []command
	for _, id := range slices.Sorted(maps.Keys(f.recs)) {
		if f.recs[id].Owed && f.acts(id) && !f.batch.sends[id] && !f.out.has(id) {
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
