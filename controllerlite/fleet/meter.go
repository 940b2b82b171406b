package fleet

import (
	"errors"
	"strings"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// Metrics: the fleet counts its messages by kind and, for those it
// rejects, by reason (Counts), and tells a Meter how long its commits and
// the devices' resyncs take. Everything else a scrape wants is read from
// Status and Devices at scrape time, so nothing is kept per message.

// Meter hears the fleet's timings. Its methods run on the fleet's loop:
// they must not block (a Prometheus histogram's Observe does not).
type Meter interface {
	// Committed: a batch was committed in d: its store write (its
	// Commands are published after it, by the outbox).
	Committed(d time.Duration)
	// Resynced: a device was back in sync d after its live status online
	// (see resync).
	Resynced(id string, d time.Duration)
}

type nopMeter struct{}

func (nopMeter) Committed(time.Duration)        {}
func (nopMeter) Resynced(string, time.Duration) {}

// Reasons a message is rejected whole, as Counts and the metrics label
// them: a small fixed set, so a label never carries free text.
const (
	// ReasonBadTopic: the topic is not <root>/<id>/<kind> with a valid id
	// and a known kind.
	ReasonBadTopic = "bad_topic"
	// ReasonReservedID: the id is the controller's own.
	ReasonReservedID = "reserved_id"
	// ReasonTooLarge: the payload is over protocol.MaxPayload bytes.
	ReasonTooLarge = "too_large"
	// ReasonInvalid: the payload breaks the rules of PROTOCOL.md "Bad
	// input" (not UTF-8 or JSON, another v, no or a bad vc, props not an
	// object, a telemetry field of the wrong type).
	ReasonInvalid = "invalid"
	// ReasonClockExhausted: the message would push the controller's clock
	// for the device into the reserve below protocol.MaxCounter.
	ReasonClockExhausted = "clock_exhausted"
	// ReasonOther: anything else (the log line says what).
	ReasonOther = "other"
)

// RejectReasons lists every reason, in the order Counts keeps them.
var RejectReasons = [...]string{ReasonBadTopic, ReasonReservedID, ReasonTooLarge, ReasonInvalid, ReasonClockExhausted, ReasonOther}

// KindUnknown labels a message whose topic names no known kind.
const KindUnknown = "unknown"

// CountedKinds are the kinds Counts keeps: the protocol's four, then
// KindUnknown.
var CountedKinds = [...]string{string(protocol.KindEvent), string(protocol.KindCmd), string(protocol.KindStatus),
	string(protocol.KindTelemetry), KindUnknown}

// Counts are the fleet's message counts since it was made, by kind (one
// of CountedKinds, the last level of the topic) and reason (one of
// RejectReasons). Every kind and reason is present, zero or not.
type Counts struct {
	Received map[string]uint64            // kind to messages handed to the fleet
	Rejected map[string]map[string]uint64 // kind to reason to messages rejected whole
}

// breakdown holds the counts by kind and reason; its indexes are those of
// CountedKinds and RejectReasons.
type breakdown struct {
	received [len(CountedKinds)]atomic.Uint64
	rejected [len(CountedKinds)][len(RejectReasons)]atomic.Uint64
}

// Counts returns the message counts by kind and reason.
func (f *Fleet) Counts() Counts {
	c := Counts{Received: map[string]uint64{}, Rejected: map[string]map[string]uint64{}}
	for k, kind := range CountedKinds {
		c.Received[kind] = f.count.by.received[k].Load()
		c.Rejected[kind] = map[string]uint64{}
		for r, reason := range RejectReasons {
			c.Rejected[kind][reason] = f.count.by.rejected[k][r].Load()
		}
	}
	return c
}

func (b *breakdown) receive(topic string) { b.received[kindIndex(topic)].Add(1) }

// reject counts a rejected message under its kind and reason.
func (b *breakdown) reject(root, topic string, payload []byte, err error) {
	b.rejected[kindIndex(topic)][reasonIndex(root, topic, payload, err)].Add(1)
}

// kindIndex is the index in CountedKinds of the topic's last level, the
// last one (KindUnknown) when it names no kind.
func kindIndex(topic string) int {
	last := topic[strings.LastIndexByte(topic, '/')+1:]
	unknown := len(CountedKinds) - 1
	for i, k := range CountedKinds[:unknown] {
		if last == k {
			return i
		}
	}
	return unknown
}

// reasonIndex is the index in RejectReasons of why a message was rejected.
func reasonIndex(root, topic string, payload []byte, err error) int {
	var r string
	if _, _, perr := protocol.ParseTopic(root, topic); perr != nil {
		r = ReasonBadTopic
	} else {
		r = RejectReason(payload, err)
	}
	for i, reason := range RejectReasons {
		if r == reason {
			return i
		}
	}
	return len(RejectReasons) - 1
}

// RejectReason classifies the error a message on a valid topic was
// rejected with.
func RejectReason(payload []byte, err error) string {
	switch {
	case errors.Is(err, protocol.ErrReservedID):
		return ReasonReservedID
	case len(payload) > protocol.MaxPayload:
		return ReasonTooLarge
	case errors.Is(err, protocol.ErrClockExhausted):
		return ReasonClockExhausted
	case errors.Is(err, protocol.ErrInvalid):
		return ReasonInvalid
	}
	return ReasonOther
}

// Resync: a device that comes online (a live status "online") is greeted
// with a Command carrying the controller's clock for it. It is back in
// sync at the first Event it sends whose clock has seen that greeting
// (vc[0] >= the greeting's vc[0]): the device has merged everything the
// controller held when it came online, and the controller has merged the
// device's state. The device sends that Event after applying the greeting
// (PROTOCOL.md "When messages are sent"), so the time between the two is
// the device's whole catch-up: the greeting's publish, the broker's
// delivery, the device's store write and its Event's way back.
//
// A greeting owed while the broker link is down counts from the status
// all the same; a status "offline" before the Event ends the wait with no
// figure, and another live "online" starts it again; a status "online"
// seen before the fleet is ready (its greeting
// comes from becomeReady) or a retained one (the device came online
// before this controller) starts none.

// resyncWait is a device's resync in progress.
type resyncWait struct {
	since time.Time // the live status online
	cmd   uint64    // the greeting's vc[0]
}

// resyncStart records a greeting sent for a live status online.
func (f *Fleet) resyncStart(id string, g protocol.Message) {
	f.resyncs[id] = resyncWait{since: f.opts.Now(), cmd: g.VC[protocol.ControllerIdx]}
}

// resyncEvent checks an accepted live Event against the device's resync
// in progress.
func (f *Fleet) resyncEvent(id string, m protocol.Message) {
	w, ok := f.resyncs[id]
	if !ok || m.VC[protocol.ControllerIdx] < w.cmd {
		return
	}
	delete(f.resyncs, id)
	f.opts.Meter.Resynced(id, f.opts.Now().Sub(w.since))
}
