package protocol

import (
	"fmt"
	"maps"
	"slices"
)

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

func (r *Replica) tick() { r.VC[r.Side]++ }

// Write records a local write that waits before it is sent: own += 1, and
// each changed property is stamped with the new clock. Values are validated
// and normalized first; nothing changes if one is invalid.
func (r *Replica) Write(changes map[string]any, src string) error {
	norm, err := normalizeAll(changes)
	if err != nil {
		return err
	}
	r.tick()
	r.stamp(norm, src)
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
	r.tick()
	r.stamp(norm, src)
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
func (r *Replica) Receive(m Message) Outcome {
	if m.VC.LessEq(r.VC) {
		return Outcome{Duplicate: true}
	}
	behind := m.VC[r.Side] > r.VC[r.Side]
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
	return out
}
