package agent

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

type actionKind int

const (
	actStatus actionKind = iota
	actEvent
	actTelemetry
	actUnsubscribe
	actSubscribe
)

func (k actionKind) String() string {
	return [...]string{"status", "event", "telemetry", "unsubscribe", "subscribe"}[k]
}

// action is one thing to send to the broker.
type action struct {
	kind    actionKind
	topic   string
	payload []byte
	qos     byte
	retain  bool
	vc      protocol.Clock // of an event, for the log
	tries   int
}

// outbox is the ordered list of actions for the publisher. A newer event,
// status or telemetry replaces an older one that has not gone out yet:
// each carries the whole state of its kind, so only the latest matters,
// and the order of what remains is kept. (Un)subscriptions are never
// replaced: each names its own topic.
type outbox struct {
	mu    sync.Mutex
	items []action
	wake  chan struct{}
}

func newOutbox() outbox { return outbox{wake: make(chan struct{}, 1)} }

func (o *outbox) push(a action) {
	o.mu.Lock()
	if a.kind != actUnsubscribe && a.kind != actSubscribe {
		o.items = slicesDeleteKind(o.items, a.kind)
	}
	o.items = append(o.items, a)
	o.mu.Unlock()
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// retry puts a back at the front unless a newer one of its kind is queued.
func (o *outbox) retry(a action) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, b := range o.items {
		if b.kind == a.kind {
			return false
		}
	}
	o.items = append([]action{a}, o.items...)
	return true
}

func (o *outbox) pop() (action, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.items) == 0 {
		return action{}, false
	}
	a := o.items[0]
	o.items = o.items[1:]
	return a, true
}

func slicesDeleteKind(items []action, k actionKind) []action {
	out := items[:0]
	for _, a := range items {
		if a.kind != k {
			out = append(out, a)
		}
	}
	return out
}

// retryDelay spaces re-sends of an event the broker did not acknowledge
// while the connection stayed up.
func retryDelay(tries int) time.Duration {
	d := time.Second << min(tries, 5)
	return min(d, 30*time.Second)
}

// publishLoop sends the outbox in order until ctx is done.
//
// A failed publish is not retried when the connection is down: every
// connect sends the device's full state again. An event the broker did not
// acknowledge on a connection that stayed up is re-sent (a duplicate is
// harmless) unless a newer event is already waiting.
func (a *Agent) publishLoop(ctx context.Context) {
	for {
		act, ok := a.out.pop()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-a.out.wake:
				continue
			}
		}
		var err error
		switch act.kind {
		case actUnsubscribe:
			err = a.conn.Unsubscribe(act.topic)
		case actSubscribe:
			err = a.conn.Subscribe(act.topic, 1)
		default:
			err = a.conn.Publish(ctx, act.topic, act.payload, act.qos, act.retain)
		}
		if err == nil {
			if act.kind == actEvent {
				a.counters.eventsSent.Add(1)
				a.log.Debug("event sent", "vc", act.vc)
			}
			continue
		}
		if ctx.Err() != nil {
			return
		}
		switch {
		case act.kind == actUnsubscribe:
			// Harmless if it stays: echoes of our own events are ignored.
			a.log.Info("unsubscribe failed", "topic", act.topic, "err", err)
		case act.kind == actSubscribe:
			// The connection keeps the filter and subscribes again, with
			// the retained messages, on its next connect.
			a.log.Info("subscribe failed; made again on the next connect", "topic", act.topic, "err", err)
		case errors.Is(err, transport.ErrNotConnected) || !a.conn.Connected():
			a.log.Info("not sent, the connection is down; the next connect sends the full state", "kind", act.kind, "vc", act.vc)
		case act.kind == actEvent:
			act.tries++
			d := retryDelay(act.tries)
			a.log.Warn("event not acknowledged; sending it again", "vc", act.vc, "in", d, "err", err)
			t := time.NewTimer(d)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			a.out.retry(act)
		default:
			a.log.Info("publish failed", "kind", act.kind, "err", err)
		}
	}
}
