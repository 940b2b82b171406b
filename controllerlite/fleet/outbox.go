package fleet

import (
	"context"
	"sync"
)

// The outbox: stored Commands go to the broker without holding the loop.
//
// A publish waits for the broker's acknowledgement, and a broker busy with
// a returning fleet's TLS handshakes acknowledges late: Mosquitto, a
// single thread, took 0.7 s to acknowledge the first of 1,000 owed
// Commands while 1,000 devices reconnected, and the loop, waiting for
// them, took none of the devices' Events meanwhile; they were all applied
// in one batch after it (1,000 devices' resync p50 1.1 s against a
// reconnect p50 0.6 s). So the loop only queues a commit's Commands here,
// once they are stored, and goes on taking Events; up to publishParallel
// publishes run at once, and each outcome comes back to the loop.
//
// The rules kept:
//   - persist before publish: a Command is queued only after the record
//     it carries is stored (commit);
//   - one device's Commands reach the broker in the order made: a device
//     has at most one publish in flight, and its next Command waits for
//     it. Only the newest waiting Command is kept: every Command carries
//     the device's whole state and a clock that dominates the ones before,
//     so it does all an older one would, and the broker retains the
//     device's newest Command (the controller reads its clock back from
//     there after a wiped store);
//   - a device is owed until the broker has taken its newest Command
//     (published): a crash before that sends it again, which is harmless.
//
// Nothing here is unbounded: at most one waiting Command per device.

// outbox is the loop's record of Commands waiting for or in a publish.
// Owned by the Run goroutine, except running, which publishes use.
type outbox struct {
	next    map[string]command  // each device's newest Command not yet handed to a publish
	order   []string            // devices with a next Command, in the order queued
	busy    map[string]bool     // devices with a publish in flight (one each)
	waiters map[string][]func() // run once the device has nothing waiting or in flight
	running sync.WaitGroup      // publishes in flight, for Run to wait for
}

func newOutbox() outbox {
	return outbox{next: map[string]command{}, busy: map[string]bool{}, waiters: map[string][]func(){}}
}

// has reports whether device id has a Command waiting or in flight.
func (o *outbox) has(id string) bool {
	_, waiting := o.next[id]
	return waiting || o.busy[id]
}

// queue hands stored Commands to the outbox, in order, and starts what
// may start. With the link down they stay owed (sendOwed sends the
// device's state again when it is back).
func (f *Fleet) queue(ctx context.Context, cmds []command) {
	for _, c := range cmds {
		f.touch(c.id)
		if f.pub == nil {
			f.log.Info("broker link down: command owed", "device", c.id, "vc", c.m.VC)
			continue
		}
		if _, ok := f.out.next[c.id]; !ok {
			f.out.order = append(f.out.order, c.id)
		}
		f.out.next[c.id] = c
	}
	f.pump(ctx)
}

// pump starts the waiting Commands, oldest first, as far as
// publishParallel allows; a device with a publish in flight keeps its
// place until that one is back.
func (f *Fleet) pump(ctx context.Context) {
	if f.pub == nil {
		return
	}
	kept := f.out.order[:0]
	for i, id := range f.out.order {
		if len(f.out.busy) >= publishParallel {
			kept = append(kept, f.out.order[i:]...)
			break
		}
		c, ok := f.out.next[id]
		switch {
		case !ok: // dropped meanwhile (link down, device deleted or handed over)
		case f.out.busy[id]:
			kept = append(kept, id)
		default:
			delete(f.out.next, id)
			f.start(ctx, c)
		}
	}
	clear(f.out.order[len(kept):])
	f.out.order = kept
}

// start publishes c on its own goroutine and hands the outcome back to
// the loop.
func (f *Fleet) start(ctx context.Context, c command) {
	p := f.pub
	f.out.busy[c.id] = true
	f.out.running.Add(1)
	go func() {
		defer f.out.running.Done()
		ok := f.publish(ctx, p, c)
		f.q.Push(func(ctx context.Context) { f.published(ctx, c, ok) })
	}()
}

// published takes the outcome of c's publish: the device is no longer
// owed if the broker took it and nothing newer waits (in the outbox or in
// the batch not yet stored); the owed mark's removal is written with the
// next flush.
func (f *Fleet) published(ctx context.Context, c command, ok bool) {
	delete(f.out.busy, c.id)
	if rec := f.recs[c.id]; rec != nil {
		if ok && !f.out.has(c.id) && !f.batch.sends[c.id] {
			rec.Owed = false
			if f.acts(c.id) {
				f.dirty[c.id] = true
			} else {
				f.clearOwedShared(c.id, c.m.VC)
			}
		}
		f.touch(c.id)
	}
	f.release(c.id)
	f.pump(ctx)
}

// release schedules the waiters of device id once it has nothing waiting
// or in flight; they run after the loop's commit, so they see the views it
// shows.
func (f *Fleet) release(id string) {
	if ws, ok := f.out.waiters[id]; ok && !f.out.has(id) {
		f.batch.idle = append(f.batch.idle, ws...)
		delete(f.out.waiters, id)
	}
}

// whenIdle runs fn on the loop once device id has no Command waiting or
// in flight: at once if it has none, else after the outcome of its last
// (and after the batch that takes it is shown to readers).
func (f *Fleet) whenIdle(id string, fn func()) {
	if !f.out.has(id) {
		fn()
		return
	}
	f.out.waiters[id] = append(f.out.waiters[id], fn)
}

// unqueue drops device id's waiting Command (its link is gone, or the
// device is deleted or handed to another instance); one in flight still
// reports its outcome.
func (f *Fleet) unqueue(id string) {
	delete(f.out.next, id)
	f.release(id)
}

// unqueueAll drops every waiting Command: the link is down. Their devices
// stay owed and are shown so.
func (f *Fleet) unqueueAll() {
	ids := f.out.order
	clear(f.out.next)
	for _, id := range ids {
		f.touch(id)
		f.release(id)
	}
	clear(f.out.order)
	f.out.order = f.out.order[:0]
}
