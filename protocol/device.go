package protocol

import (
	"maps"
	"slices"
)

// DeviceState is everything a device persists. It is written before any
// message that depends on it is sent, so a restart never sends a clock
// backwards or forgets a write it already announced.
type DeviceState struct {
	Replica *Replica `json:"replica"`
	// Rejoining is true from a start with no stored state until the device
	// has caught up with what the controller and the broker remember.
	Rejoining bool `json:"rejoining,omitempty"`
	// Pending holds local writes made while rejoining; they are stamped when
	// the wait ends, after every merge, so they win over older state.
	Pending    map[string]any `json:"pending,omitempty"`
	PendingSrc string         `json:"pending_src,omitempty"`
	// Unconfirmed is set when a rejoin ended by its timeout, having heard
	// nothing: the clock restarted from what little the device knew, so
	// its writes since may carry stamps the controller already counted
	// and would take for duplicates. Written names the properties written
	// locally meanwhile; the first live Command stamps them again, after
	// its merge, and ends this state.
	Unconfirmed bool     `json:"unconfirmed,omitempty"`
	Written     []string `json:"written,omitempty"`
	// ScheduleLast identifies the last schedule entry the device applied
	// (the occurrence and what it set): the entry in force is applied at
	// start, and when the schedule is written or enabled, only when it is
	// another one, so a hold survives a restart (PROTOCOL.md).
	ScheduleLast string `json:"schedule_last,omitempty"`
}

// Device is the device side of the protocol for one thermostat: it decides
// how clocks move and when an Event is sent. It does no I/O and is not safe
// for concurrent use; the firmware serialises calls and persists State()
// after each one that returns a message or changes state.
type Device struct {
	st     DeviceState
	online bool
}

// NewDevice starts a device that has no stored state (first boot, a
// re-imaged card). defaults are the values it runs with until it learns
// better; they carry the zero stamp, so any real write supersedes them.
func NewDevice(defaults map[string]any) (*Device, error) {
	r := NewReplica(DeviceSide)
	norm := map[string]any{}
	if len(defaults) > 0 {
		var err error
		if norm, err = normalizeAll(defaults); err != nil {
			return nil, err
		}
	}
	for name, v := range norm {
		r.Props[name] = Prop{Val: v}
	}
	r.Src = SrcBoot
	return &Device{st: DeviceState{Replica: r, Rejoining: true}}, nil
}

// RestoreDevice resumes from stored state.
func RestoreDevice(st DeviceState) *Device {
	st = cloneState(st)
	if st.Replica == nil {
		st.Replica = NewReplica(DeviceSide)
	}
	st.Replica.Side = DeviceSide
	if st.Replica.Props == nil {
		st.Replica.Props = Props{}
	}
	return &Device{st: st}
}

// Rollback returns the device to st, a state it persisted earlier,
// keeping whether it is online. The firmware calls it when it cannot
// persist what a call changed: the change is then undone rather than kept
// in memory only, so nothing is sent that a restart would contradict, and
// a local write made while connected still goes out at once afterwards.
func (d *Device) Rollback(st DeviceState) {
	online := d.online
	*d = *RestoreDevice(st)
	d.online = online
}

func cloneState(st DeviceState) DeviceState {
	if st.Replica != nil {
		st.Replica = st.Replica.Clone()
	}
	if st.Pending != nil {
		st.Pending = maps.Clone(st.Pending)
	}
	st.Written = slices.Clone(st.Written)
	return st
}

// State returns a copy of the state to persist.
func (d *Device) State() DeviceState { return cloneState(d.st) }

// Clock returns the device's clock.
func (d *Device) Clock() Clock { return d.st.Replica.VC }

// Rejoining reports whether the device still waits to catch up after a
// start with no stored state; it sends no Event meanwhile.
func (d *Device) Rejoining() bool { return d.st.Rejoining }

// Props returns the stamped properties, without pending writes.
func (d *Device) Props() Props { return d.st.Replica.Props.Clone() }

// Effective returns the values the thermostat should run with now: the
// stamped properties with any pending local writes on top.
func (d *Device) Effective() map[string]any {
	out := make(map[string]any, len(d.st.Replica.Props)+len(d.st.Pending))
	for name, p := range d.st.Replica.Props {
		out[name] = p.Val
	}
	maps.Copy(out, d.st.Pending)
	return out
}

// Connect is called once connected and subscribed. It returns the Event to
// send, so that an Event lost in an outage is repaired, or nil while
// rejoining.
func (d *Device) Connect() *Message {
	d.online = true
	if d.st.Rejoining {
		return nil
	}
	m := d.st.Replica.Send()
	return &m
}

// ScheduleLast is the key of the last schedule entry applied.
func (d *Device) ScheduleLast() string { return d.st.ScheduleLast }

// ScheduleWrite applies a schedule entry: a local write with src
// "schedule" (a device event, which wins a concurrent controller write),
// remembered as the last entry applied in the same state. An entry that
// cannot apply (a preset the presets no longer define) is remembered all
// the same, so it is not tried again until the next one, and its error
// returned.
func (d *Device) ScheduleWrite(key string, changes map[string]any) (*Message, error) {
	m, err := d.LocalWrite(changes, SrcSchedule)
	d.st.ScheduleLast = key
	return m, err
}

// Disconnect records that the connection is gone: local writes now wait.
func (d *Device) Disconnect() { d.online = false }

// LocalWrite applies a change made on the device (button, local interface).
// Connected, write and send are one event and the Event is returned; offline
// the write waits and goes out with the Event sent on the next Connect.
func (d *Device) LocalWrite(changes map[string]any, src string) (*Message, error) {
	changes, err := ExpandWrite(d.Effective(), changes)
	if err != nil {
		return nil, err
	}
	if d.st.Rejoining {
		norm, err := normalizeAll(changes)
		if err != nil {
			return nil, err
		}
		if d.st.Pending == nil {
			d.st.Pending = map[string]any{}
		}
		maps.Copy(d.st.Pending, norm)
		d.st.PendingSrc = src
		return nil, nil
	}
	var m *Message
	if !d.online {
		if err := d.st.Replica.Write(changes, src); err != nil {
			return nil, err
		}
	} else {
		sent, err := d.st.Replica.WriteAndSend(changes, src)
		if err != nil {
			return nil, err
		}
		m = &sent
	}
	if d.st.Unconfirmed {
		for name := range changes {
			if !slices.Contains(d.st.Written, name) {
				d.st.Written = append(d.st.Written, name)
			}
		}
		slices.Sort(d.st.Written)
		d.st.PendingSrc = src
	}
	return m, nil
}

// ReceiveCommand applies a Command. retained is the MQTT RETAIN flag of the
// delivery. It returns the Event to send: after a Command that changed a
// property, or when a live Command ends a rejoin. A discarded or duplicate
// Command sends nothing. A Command the clock rules refuse (see
// Replica.Receive) returns an error wrapping ErrInvalid and changes nothing.
func (d *Device) ReceiveCommand(m Message, retained bool) (Outcome, *Message, error) {
	if d.st.Unconfirmed {
		return d.receiveUnconfirmed(m, !retained)
	}
	out, err := d.st.Replica.Receive(m)
	if err != nil {
		return out, nil, err
	}
	if d.st.Rejoining {
		// A retained Command may predate the device's own later Events, so
		// only a live one (such as the controller's greeting) ends the wait.
		if retained {
			return out, nil, nil
		}
		return out, d.endRejoin(), nil
	}
	if len(out.Applied) == 0 {
		return out, nil, nil
	}
	e := d.st.Replica.Send()
	return out, &e, nil
}

// ReceiveOwnEvent handles the device's own Event topic, which it reads only
// while rejoining: its retained Event restores what it last announced and
// ends the wait. Afterwards such messages are echoes and duplicates.
func (d *Device) ReceiveOwnEvent(m Message) (Outcome, *Message, error) {
	if d.st.Unconfirmed {
		return d.receiveUnconfirmed(m, true)
	}
	out, err := d.st.Replica.Receive(m)
	if err != nil || !d.st.Rejoining {
		return out, nil, err
	}
	return out, d.endRejoin(), nil
}

// SyncTimeout ends a rejoin that heard nothing in time. The device goes on
// with what it has, but its writes stay unconfirmed until it hears the
// controller live (see DeviceState.Unconfirmed).
func (d *Device) SyncTimeout() *Message {
	if !d.st.Rejoining {
		return nil
	}
	d.st.Unconfirmed = true
	d.st.Written = slices.Sorted(maps.Keys(d.st.Pending))
	src := d.st.PendingSrc
	m := d.endRejoin()
	d.st.PendingSrc = src
	return m
}

// receiveUnconfirmed applies a message while writes made after a timed-out
// rejoin are unconfirmed. Those properties keep the device's values: the
// controller cannot have seen them (it may even have taken them for
// duplicates), so whatever it sends for them is concurrent and the
// device's write wins. A live message, carrying the controller's current
// clock, then ends the state: the written values are stamped again after
// the merge, so they dominate everything the controller knows.
func (d *Device) receiveUnconfirmed(m Message, live bool) (Outcome, *Message, error) {
	r := d.st.Replica
	saved := Props{}
	for _, name := range d.st.Written {
		if p, ok := r.Props[name]; ok {
			saved[name] = p
		}
	}
	src := r.Src
	out, err := r.Receive(m)
	if err != nil || out.Duplicate {
		return out, nil, err
	}
	var applied []string
	for _, name := range out.Applied {
		if p, ok := saved[name]; ok {
			r.Props[name] = p
			out.Kept = append(out.Kept, name)
			r.Src = src
			continue
		}
		applied = append(applied, name)
	}
	out.Applied = applied
	if !live {
		if len(applied) == 0 || !d.online {
			return out, nil, nil
		}
		e := r.Send()
		return out, &e, nil
	}
	if len(saved) > 0 {
		vals := make(map[string]any, len(saved))
		for name, p := range saved {
			vals[name] = p.Val
		}
		_ = r.Write(vals, d.st.PendingSrc) // valid: they were validated when written
	}
	d.st.Unconfirmed, d.st.Written, d.st.PendingSrc = false, nil, ""
	if !d.online {
		return out, nil, nil
	}
	e := r.Send()
	return out, &e, nil
}

func (d *Device) endRejoin() *Message {
	d.st.Rejoining = false
	if len(d.st.Pending) > 0 {
		// Validated when they were made; stamping after every merge makes
		// them supersede whatever the rejoin brought in.
		_ = d.st.Replica.Write(d.st.Pending, d.st.PendingSrc)
		d.st.Pending, d.st.PendingSrc = nil, ""
	}
	if !d.online {
		return nil
	}
	m := d.st.Replica.Send()
	return &m
}
