package protocol

import "fmt"

// Indexes of a Clock. Index 0 counts controller events and index 1 device
// events on both sides, so a clock reads the same wherever it is printed.
const (
	ControllerIdx = 0
	DeviceIdx     = 1
)

// Side names which party a replica belongs to; its value is the clock index
// that party increments for its own events.
type Side int

const (
	ControllerSide Side = ControllerIdx
	DeviceSide     Side = DeviceIdx
)

func (s Side) String() string {
	if s == ControllerSide {
		return "controller"
	}
	return "device"
}

// Clock is a vector clock of two counters, written [c, d]. It marshals to
// JSON as a two-element array.
type Clock [2]uint64

// Order is how one clock relates to another.
type Order int

const (
	Equal      Order = iota // every element equal
	Before                  // dominated: every element <=, one <
	After                   // dominates: every element >=, one >
	Concurrent              // neither dominates
)

func (o Order) String() string {
	switch o {
	case Equal:
		return "equal"
	case Before:
		return "before"
	case After:
		return "after"
	}
	return "concurrent"
}

// Compare tells how c relates to o.
func (c Clock) Compare(o Clock) Order {
	le := c[0] <= o[0] && c[1] <= o[1]
	ge := c[0] >= o[0] && c[1] >= o[1]
	switch {
	case le && ge:
		return Equal
	case le:
		return Before
	case ge:
		return After
	}
	return Concurrent
}

// LessEq reports c <= o element-wise: a message whose clock is LessEq the
// receiver's clock is a duplicate.
func (c Clock) LessEq(o Clock) bool { return c[0] <= o[0] && c[1] <= o[1] }

// Merge is the element-wise maximum of c and o.
func (c Clock) Merge(o Clock) Clock {
	return Clock{max(c[0], o[0]), max(c[1], o[1])}
}

// IsZero reports whether no event has been counted.
func (c Clock) IsZero() bool { return c == Clock{} }

func (c Clock) String() string { return fmt.Sprintf("[%d,%d]", c[0], c[1]) }

// Supersedes reports whether an incoming value stamped in replaces a local
// value stamped loc. It takes the incoming value when its stamp dominates, and
// keeps the local one when the stamps are equal or the local one dominates.
//
// For concurrent stamps PROTOCOL.md says the device's write wins. Between one
// controller and one device, two concurrent stamps always come from one write
// on each side, and the device's write is the one with the greater device
// counter: the controller stamps its writes with the device counter it has
// seen, which a concurrent device write must exceed. Deciding on that counter
// gives the same answer on both sides without carrying the writer's identity:
// a device keeps its own value, and the controller takes the device's.
func Supersedes(in, loc Clock) bool {
	switch in.Compare(loc) {
	case After:
		return true
	case Concurrent:
		return in[DeviceIdx] > loc[DeviceIdx]
	}
	return false
}
