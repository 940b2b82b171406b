package protocol

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// ErrUnknownDevice is returned for a device the controller has never heard of.
var ErrUnknownDevice = errors.New("unknown device")

// ErrNotReady is returned for a remote write made before the controller has
// read the retained state: a write stamped from a clock that has not yet
// merged what the broker remembers could be taken for a duplicate.
var ErrNotReady = errors.New("controller has not finished reading retained state")

// Controller is the controller side of the protocol: one replica, and so one
// clock, per device. It does no I/O and is not safe for concurrent use; the
// caller serialises calls and persists Replica(id) after each call that
// changes it, before sending what the call returns.
type Controller struct {
	devices map[string]*Replica
	ready   bool
	greet   map[string]bool // devices seen online before ready
}

// NewController resumes from stored replicas (nil or empty for a controller
// with no store). It is not ready until Ready is called: first it must read
// every retained event and its own retained commands.
func NewController(stored map[string]*Replica) *Controller {
	c := &Controller{devices: map[string]*Replica{}, greet: map[string]bool{}}
	for id, r := range stored {
		r = r.Clone()
		r.Side = ControllerSide
		if r.Props == nil {
			r.Props = Props{}
		}
		c.devices[id] = r
	}
	return c
}

// IDs returns the known device ids, sorted.
func (c *Controller) IDs() []string { return slices.Sorted(maps.Keys(c.devices)) }

// Known reports whether id has been heard of.
func (c *Controller) Known(id string) bool { _, ok := c.devices[id]; return ok }

// Replica returns a copy of the device's replica, or nil.
func (c *Controller) Replica(id string) *Replica {
	r, ok := c.devices[id]
	if !ok {
		return nil
	}
	return r.Clone()
}

// IsReady reports whether retained state has been read.
func (c *Controller) IsReady() bool { return c.ready }

func (c *Controller) device(id string) *Replica {
	r, ok := c.devices[id]
	if !ok {
		r = NewReplica(ControllerSide)
		c.devices[id] = r
	}
	return r
}

// Set is a remote user's change, written and sent at once: it returns the
// Command to publish (retained), whether the device is online or not.
func (c *Controller) Set(id string, changes map[string]any) (Message, error) {
	if !c.ready {
		return Message{}, ErrNotReady
	}
	r, ok := c.devices[id]
	if !ok {
		return Message{}, fmt.Errorf("%w %q", ErrUnknownDevice, id)
	}
	changes, err := ExpandWrite(r.Props.Values(), changes)
	if err != nil {
		return Message{}, err
	}
	return r.WriteAndSend(changes, SrcController)
}

// ReceiveEvent applies a device's Event. It returns a Command to send when
// the Event shows the controller's clock for the device went backwards (a
// lost store, with the broker's retained messages lost too or not yet
// delivered): the device had seen controller events this controller does
// not remember, so it takes the controller's recent Commands for
// duplicates. A Command from the merged clock is beyond anything the
// device has seen and carries the controller's state across; without it
// the two sides could disagree until the next greeting.
//
// An Event the clock rules refuse (see Replica.Receive) returns an error
// wrapping ErrInvalid, and nothing changes.
func (c *Controller) ReceiveEvent(id string, m Message) (Outcome, *Message, error) {
	out, err := c.device(id).Receive(m)
	if err != nil || !out.OwnBehind {
		return out, nil, err
	}
	return out, c.Online(id), nil
}

// ReceiveCommand applies one of the controller's own Commands read back from
// the broker (retained): after a lost store it is how the controller's
// earlier writes come back. For a controller with intact state it is a
// duplicate.
func (c *Controller) ReceiveCommand(id string, m Message) (Outcome, error) {
	return c.device(id).Receive(m)
}

// Seen records a device known only by a message that carries no state (its
// status or telemetry).
func (c *Controller) Seen(id string) { c.device(id) }

// Online handles a device's status "online", live or retained: it returns
// the greeting Command carrying the controller's clock and properties for
// that device, or nil if the controller is not ready yet (the greeting then
// comes from Ready).
func (c *Controller) Online(id string) *Message {
	r := c.device(id)
	if !c.ready {
		c.greet[id] = true
		return nil
	}
	m := r.Send()
	return &m
}

// Offline records a device's status "offline": a pending greeting is moot.
func (c *Controller) Offline(id string) {
	c.device(id)
	delete(c.greet, id)
}

// Ready marks the retained state as read and returns the greetings owed to
// devices that were seen online meanwhile, by device id.
func (c *Controller) Ready() map[string]Message {
	c.ready = true
	out := map[string]Message{}
	for _, id := range slices.Sorted(maps.Keys(c.greet)) {
		out[id] = c.devices[id].Send()
	}
	clear(c.greet)
	return out
}
