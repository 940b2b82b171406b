package protocol

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
)

// ErrClockExhausted is returned for a write or a receive that would take
// this side's own counter past MaxCounter. Honest clocks never come near it
// (an event every millisecond for 140,000 years); only a peer that sent a
// counter near the bound, by bug or on purpose, can cause it.
var ErrClockExhausted = errors.New("clock exhausted")

// ownReserve is the room a receive must leave below MaxCounter for this
// side's own counter. A message may move the receiver's own counter up (a
// peer that saw more of this side's events than it remembers, after a lost
// store), but not into the last 2^32 events: otherwise a peer could leave
// this side with no events to count, and every message this side sent would
// then carry a counter its peers must reject. Honest clocks are never
// within 2^32 of the bound, so this refuses nothing a real peer sends.
const ownReserve = 1 << 32

// Replica is one side's copy of one device's state: the controller holds one
// per device, a device holds one for itself. The zero value with Side set is
// a replica that has seen nothing.
type Replica struct {
	Side  Side  `json:"side"`
	VC    Clock `json:"vc"`
	Props Props `json:"props"`
	// Src is who made the newest write this replica holds; it goes out in
	// the "src" of the next message.
	Src string `json:"src,omitempty"`
}

// NewReplica returns an empty replica for side.
func NewReplica(side Side) *Replica { return &Replica{Side: side, Props: Props{}} }

// Clone returns a deep copy.
func (r *Replica) Clone() *Replica {
	c := *r
	c.Props = r.Props.Clone()
	return &c
}

// tick counts one event of this side. At MaxCounter it leaves the clock as
// it is: only a flood of 2^32 messages after a peer pushed this side's
// counter to the edge of ownReserve gets here; a message sent then repeats
// the last clock and is a harmless duplicate to its receiver.
func (r *Replica) tick() {
	if r.VC[r.Side] < MaxCounter {
		r.VC[r.Side]++
	}
}

func (r *Replica) canTick() error {
	if r.VC[r.Side] >= MaxCounter {
		return fmt.Errorf("%w: own counter %d is at the limit %d", ErrClockExhausted, r.VC[r.Side], uint64(MaxCounter))
	}
	return nil
}

// Write records a local write that waits before it is sent: own += 1, and
// each changed property is stamped with the new clock. Values are validated
// and normalized first; nothing changes if one is invalid or the clock
// cannot count another event.
func (r *Replica) Write(changes map[string]any, src string) error {
	norm, err := normalizeAll(changes)
	if err != nil {
		return err
	}
	if err := r.canTick(); err != nil {
		return err
	}
	saved := r.Clone()
	r.tick()
	r.stamp(norm, src)
	if err := r.fits(); err != nil {
		*r = *saved
		return err
	}
	return nil
}

// ErrTooLarge is returned for a write after which the replica's state
// would not fit one message (PROTOCOL.md: at most MaxPayload bytes).
var ErrTooLarge = errors.New("the device's state would not fit one message")

// fits checks that a message carrying the replica's state fits a payload.
func (r *Replica) fits() error {
	if _, err := r.message().Encode(); err != nil {
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	}
	return nil
}

// Send is the send event: own += 1, and the message carries the clock after
// the increment and every property the replica knows.
func (r *Replica) Send() Message {
	r.tick()
	return r.message()
}

// WriteAndSend is a local write sent at once: write and send are one event,
// so own += 1 once and the stamp equals the message clock.
func (r *Replica) WriteAndSend(changes map[string]any, src string) (Message, error) {
	norm, err := normalizeAll(changes)
	if err != nil {
		return Message{}, err
	}
	if err := r.canTick(); err != nil {
		return Message{}, err
	}
	saved := r.Clone()
	r.tick()
	r.stamp(norm, src)
	if err := r.fits(); err != nil {
		*r = *saved
		return Message{}, err
	}
	return r.message(), nil
}

func (r *Replica) stamp(norm map[string]any, src string) {
	if r.Props == nil {
		r.Props = Props{}
	}
	for name, v := range norm {
		r.Props[name] = Prop{Val: v, W: r.VC}
	}
	r.Src = src
}

func (r *Replica) message() Message {
	return Message{V: Version, VC: r.VC, Props: r.Props.Clone(), Src: r.Src}
}

func normalizeAll(changes map[string]any) (map[string]any, error) {
	if len(changes) == 0 {
		return nil, fmt.Errorf("no property to write")
	}
	norm := make(map[string]any, len(changes))
	for _, name := range slices.Sorted(maps.Keys(changes)) {
		v, err := Normalize(name, changes[name])
		if err != nil {
			return nil, err
		}
		norm[name] = v
	}
	return norm, nil
}

// Outcome is what one receive did.
type Outcome struct {
	Duplicate bool     // m <= clock: nothing changed
	Applied   []string // properties whose incoming value was taken
	Kept      []string // properties where the local value stood (stale, equal or concurrent)
	Conflicts []string // the subset of Kept and Applied decided as concurrent writes
	// OwnBehind: the message counted more of this side's own events than
	// this replica remembers. This side lost state and restarted its
	// counter lower, so what it sent since may have been taken for a
	// duplicate; the controller answers with a Command from its merged
	// clock (see Controller.ReceiveEvent).
	OwnBehind bool
}

// Receive applies a message: a duplicate (its clock <= ours) changes
// nothing; otherwise the clocks merge, own += 1, and every property is
// settled by Supersedes. The message must come from DecodeMessage (or be
// otherwise valid); its invalid properties are already left out.
//
// A message that would move this side's own counter into the reserve below
// MaxCounter, or that arrives when this side cannot count another event, is
// refused whole with an error wrapping ErrInvalid and ErrClockExhausted, and
// nothing changes.
func (r *Replica) Receive(m Message) (Outcome, error) {
	if m.VC.LessEq(r.VC) {
		return Outcome{Duplicate: true}, nil
	}
	behind := m.VC[r.Side] > r.VC[r.Side]
	if behind && m.VC[r.Side] > MaxCounter-ownReserve {
		return Outcome{}, fmt.Errorf("%w: %w: it counts %d events of this side, within %d of the limit %d",
			ErrInvalid, ErrClockExhausted, m.VC[r.Side], uint64(ownReserve), uint64(MaxCounter))
	}
	if err := r.canTick(); err != nil {
		return Outcome{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	r.VC = r.VC.Merge(m.VC)
	r.tick()
	if r.Props == nil {
		r.Props = Props{}
	}
	out := Outcome{OwnBehind: behind}
	for _, name := range slices.Sorted(maps.Keys(m.Props)) {
		in := m.Props[name]
		loc, have := r.Props[name]
		if have && in.W.Compare(loc.W) == Concurrent {
			out.Conflicts = append(out.Conflicts, name)
		}
		if !have || Supersedes(in.W, loc.W) {
			r.Props[name] = in
			out.Applied = append(out.Applied, name)
			r.Src = m.Src
			continue
		}
		out.Kept = append(out.Kept, name)
	}
	return out, nil
}

// Validate checks a replica read back from a store against what the
// protocol can produce: counters within MaxCounter, property values valid
// and in canonical form, stamps within the clock. Both stores call it, so
// a damaged file is refused by one rule, with a clear error.
func (r *Replica) Validate() error {
	for _, c := range r.VC {
		if c > MaxCounter {
			return fmt.Errorf("clock %v: counter over the limit %d", r.VC, uint64(MaxCounter))
		}
	}
	for _, name := range slices.Sorted(maps.Keys(r.Props)) {
		p := r.Props[name]
		v, err := Normalize(name, p.Val)
		if err != nil {
			return fmt.Errorf("property %s: %w", name, err)
		}
		if !reflect.DeepEqual(v, p.Val) {
			return fmt.Errorf("property %s: value %v is not in canonical form", name, p.Val)
		}
		if !p.W.LessEq(r.VC) {
			return fmt.Errorf("property %s: stamp %v beyond the clock %v", name, p.W, r.VC)
		}
	}
	return nil
}
