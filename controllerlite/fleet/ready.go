package fleet

import (
	"context"
	"maps"
	"slices"
)

// Readiness and the broker link: the fleet may not stamp a remote write
// before it has read what the broker retains (see the package doc).

// LinkUp tells the fleet the link is connected and subscribed to Filters,
// and publishes through p from now on. retainedDelivered says every
// retained message has already been handed to Receive (true for the
// embedded broker); otherwise they are still coming.
func (f *Fleet) LinkUp(p Publisher, retainedDelivered bool) {
	f.q.Push(func(context.Context) { f.linkUp(p, retainedDelivered) })
}

// LinkDown tells the fleet the link is lost: Commands are owed until the
// next LinkUp.
func (f *Fleet) LinkDown(err error) {
	f.q.Push(func(context.Context) {
		f.log.Warn("broker link down: commands are kept until it is back", "error", err)
		f.pub = nil
		f.connected.Store(false)
		f.unqueueAll()
		if f.wait.waiting {
			f.wait.waiting = false
			f.wait.timer.Stop()
		}
	})
}

func (f *Fleet) linkUp(p Publisher, retainedDelivered bool) {
	f.pub = p
	f.connected.Store(true)
	switch {
	case f.ctrl.IsReady():
		f.log.Info("broker link up")
		f.sendOwed()
	case retainedDelivered:
		f.becomeReady()
	default:
		f.log.Info("broker link up: reading retained messages")
		now := f.opts.Now()
		f.wait.waiting = true
		f.wait.lastRet = now
		f.wait.deadline = now.Add(f.opts.RetainedTimeout)
		f.wait.timer.Reset(f.opts.QuietPeriod)
	}
}

// checkRetained runs when the quiet timer fires while waiting for an
// external broker's retained messages.
func (f *Fleet) checkRetained() {
	if !f.wait.waiting {
		return
	}
	now := f.opts.Now()
	quietAt := f.wait.lastRet.Add(f.opts.QuietPeriod)
	if now.Before(quietAt) && now.Before(f.wait.deadline) {
		f.wait.timer.Reset(min(quietAt.Sub(now), f.wait.deadline.Sub(now)))
		return
	}
	if !now.Before(f.wait.deadline) {
		f.log.Warn("retained messages still arriving at the deadline: ready anyway", "timeout", f.opts.RetainedTimeout)
	}
	f.wait.waiting = false
	f.becomeReady()
}

// becomeReady marks the retained state read, greets the devices seen
// online meanwhile and sends what is owed.
func (f *Fleet) becomeReady() {
	greet := f.ctrl.Ready()
	var cmds []command
	for _, id := range slices.Sorted(maps.Keys(greet)) {
		cmds = append(cmds, command{id, greet[id]})
	}
	for _, id := range slices.Sorted(maps.Keys(f.recs)) {
		if _, greeted := greet[id]; f.recs[id].Owed && !greeted && f.acts(id) {
			if m := f.ctrl.Online(id); m != nil {
				cmds = append(cmds, command{id, *m})
			}
		}
	}
	f.log.Info("retained state read: ready", "devices", len(f.recs), "greetings", len(greet), "commands", len(cmds))
	f.send(cmds)
}
