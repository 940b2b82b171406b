package e2e

import (
	"fmt"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

// waitClocks waits until the controller's clock for d and d's own clock
// are exactly ctl and dev, with d connected and done rejoining.
func waitClocks(t *testing.T, w *world, d *thermostat, ctl, dev protocol.Clock) {
	t.Helper()
	eventually(t, fmt.Sprintf("controller %v, %s %v", ctl, d.id, dev), func() (bool, string) {
		st := d.status()
		c, err := w.ctl(d.id)
		if err != nil {
			return false, err.Error()
		}
		return c.VC == ctl && st.VC == dev && st.Connected && !st.Rejoining,
			fmt.Sprintf("controller %v %v, device %v %v connected=%v rejoining=%v", c.VC, c.Props, st.VC, st.Props, st.Connected, st.Rejoining)
	})
}

// TestWorkedExampleOverTheWire plays the worked example of PROTOCOL.md
// between controllerlite and a thermostat, over TLS through the broker,
// with the thermostat's traffic held in a proxy while both sides write, so
// that each sends before it has received the other's message and the
// conflict really happens. Every clock is checked against PROTOCOL.md's
// rules. The product writes and sends at once (the API's PUT and
// `thermostat set` while connected), so T1+T2 and T'1+T'2 are one event
// each, and the fleet starts from the clocks its first exchange left
// rather than from [0,0]; the comparisons and who wins are the example's.
func TestWorkedExampleOverTheWire(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newWorld(t, kind)
		d1 := w.newThermostat("d1", thermostatOptions{proxy: true})
		d1.start()

		// A fresh fleet. d1 has no stored state, so it rejoins: it sends
		// no Event until it hears from the controller. The controller
		// greets it when its status "online" arrives (a send: [1,0], no
		// properties yet); the live greeting ends the rejoin (a receive:
		// [1,1]) and d1 sends its first Event ([1,2]) with its defaults,
		// stamped [0,0]; the controller receives it ([2,2]).
		greeting := tick(protocol.Clock{}, ctlSide)
		dev := tick(receive(protocol.Clock{}, greeting, devSide), devSide)
		ctl := receive(greeting, dev, ctlSide)
		if ctl != (protocol.Clock{2, 2}) || dev != (protocol.Clock{1, 2}) {
			t.Fatalf("the rules give controller %v, device %v; PROTOCOL.md's table says [2,2] and [1,2]", ctl, dev)
		}
		waitClocks(t, w, d1, ctl, dev)
		modeStamp := d1.status().Props[protocol.PropMode].W

		// Hold d1's traffic: whatever either side sends now waits in flight.
		d1.proxy.Hold()
		received := d1.status().Counters.Received

		// T1+T2: a remote user sets 18 at the controller; the Command goes
		// out at once, stamped with the clock it carries.
		c := w.set("d1", map[string]any{protocol.PropSetpoint: 18.0})
		ctl = tick(ctl, ctlSide) // [3,2]
		ctlStamp := ctl
		if sp, w := setpoint(c.Props); c.VC != ctl || sp != 18 || w != ctlStamp {
			t.Fatalf("T1+T2: controller %v with setpoint %v@%v, want %v with 18@%v", c.VC, sp, w, ctl, ctlStamp)
		}

		// T'1+T'2: a person sets 23 on the device; its Event goes out at once.
		d1.set(map[string]any{protocol.PropSetpoint: 23.0})
		dev = tick(dev, devSide) // [1,3]
		devStamp := dev
		st := d1.status()
		if sp, w := setpoint(st.Props); st.VC != dev || sp != 23 || w != devStamp {
			t.Fatalf("T'1+T'2: device %v with setpoint %v@%v, want %v with 23@%v", st.VC, sp, w, dev, devStamp)
		}
		if o := ctlStamp.Compare(devStamp); o != protocol.Concurrent {
			t.Fatalf("stamps %v and %v are %v: the writes must be concurrent", ctlStamp, devStamp, o)
		}
		// Nothing crossed while held: neither side has heard of the other's write.
		if got := d1.status().Counters.Received; got != received {
			t.Fatalf("d1 received %d messages while its traffic was held", got-received)
		}
		if c := w.mustCtl("d1"); c.VC != ctl {
			t.Fatalf("the controller's clock moved to %v while d1's traffic was held", c.VC)
		}

		mark := w.logs.mark()
		d1.proxy.Release()

		// d1 receives [3,2]: not a duplicate, so the clocks merge and it
		// ticks ([3,4]); the stamps are concurrent and the device keeps its
		// own value; a discarded Command sends nothing. The controller
		// receives [1,3]: merge and tick ([4,3]); concurrent, the device
		// wins, the controller takes 23 with the device's stamp.
		dev = receive(dev, ctlStamp, devSide)
		ctl = receive(ctl, devStamp, ctlSide)
		waitClocks(t, w, d1, ctl, dev)
		st, c = d1.status(), w.mustCtl("d1")
		for side, p := range map[string]protocol.Props{"device": st.Props, "controller": c.Props} {
			if sp, w := setpoint(p); sp != 23 || w != devStamp {
				t.Errorf("after the conflict the %s has setpoint %v@%v, want the device's 23@%v", side, sp, w, devStamp)
			}
			if w := p[protocol.PropMode].W; w != modeStamp {
				t.Errorf("the %s's mode stamp moved from %v to %v: properties are independent", side, modeStamp, w)
			}
		}
		if n := st.Counters.Discarded; n != 1 {
			t.Errorf("d1 counted %d discarded commands, want 1", n)
		}
		// A setpoint written by itself writes preset "none" with it
		// (PROTOCOL.md), so both registers were written concurrently.
		w.logs.wait(t, mark, "who=d1", `msg="command discarded: the device's values stand"`, `conflicts="[preset setpoint_c]"`)
		w.logs.wait(t, mark, "who=controller", `msg="message applied"`, "topic=thermo/d1/event", `conflicts="[preset setpoint_c]"`)

		// T3: the remote user sets 18 again, write and send at once
		// ([5,3]); its stamp has seen the device's write and dominates it.
		c = w.set("d1", map[string]any{protocol.PropSetpoint: 18.0})
		ctl = tick(ctl, ctlSide)
		again := ctl
		if sp, w := setpoint(c.Props); c.VC != ctl || sp != 18 || w != again {
			t.Fatalf("T3: controller %v with setpoint %v@%v, want %v with 18@%v", c.VC, sp, w, ctl, again)
		}
		if o := again.Compare(devStamp); o != protocol.After {
			t.Fatalf("T3's stamp %v is %v the device's %v, want after", again, o, devStamp)
		}
		// d1 receives [5,3] ([5,5]), takes 18, and sends an Event about it
		// (a send: [5,6]); the controller receives it ([6,6]).
		dev = tick(receive(dev, again, devSide), devSide)
		ctl = receive(ctl, dev, ctlSide)
		waitClocks(t, w, d1, ctl, dev)
		st, c = d1.status(), w.mustCtl("d1")
		for side, p := range map[string]protocol.Props{"device": st.Props, "controller": c.Props} {
			if sp, w := setpoint(p); sp != 18 || w != again {
				t.Errorf("after T3 the %s has setpoint %v@%v, want 18@%v", side, sp, w, again)
			}
		}
		if n := st.Counters.Applied; n != 1 {
			t.Errorf("d1 counted %d applied commands, want 1 (T3)", n)
		}
		if got := st.Effective[protocol.PropSetpoint]; got != 18.0 {
			t.Errorf("the thermostat runs with setpoint %v, want 18", got)
		}
	})
}

// TestConcurrentBursts: while d1's traffic is held, a person changes the
// setpoint three times on the device and a remote user sets the setpoint
// and then the mode at the controller. When the traffic flows again both
// sides settle on the same values: the device's last setpoint (its writes
// are concurrent with the controller's, and the device wins) and the
// controller's mode (the device never wrote it, and properties are
// independent registers), each with the stamp of the write that made it.
func TestConcurrentBursts(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newWorld(t, kind)
		d1 := w.newThermostat("d1", thermostatOptions{proxy: true})
		d1.start()
		d1.waitSynced()

		d1.proxy.Hold()
		w.set("d1", map[string]any{protocol.PropSetpoint: 18.0})
		for _, sp := range []float64{21, 22, 23} {
			d1.set(map[string]any{protocol.PropSetpoint: sp})
		}
		c := w.set("d1", map[string]any{protocol.PropMode: protocol.ModeCool})
		_, devStamp := setpoint(d1.status().Props)
		ctlMode := c.Props[protocol.PropMode]
		if _, ctlStamp := setpoint(c.Props); ctlStamp.Compare(devStamp) != protocol.Concurrent {
			t.Fatalf("setpoint stamps %v and %v are not concurrent", ctlStamp, devStamp)
		}
		d1.proxy.Release()

		st, ctl := d1.waitSynced()
		for side, p := range map[string]protocol.Props{"device": st.Props, "controller": ctl.Props} {
			if sp, w := setpoint(p); sp != 23 || w != devStamp {
				t.Errorf("the %s has setpoint %v@%v, want the device's last write 23@%v", side, sp, w, devStamp)
			}
			if p[protocol.PropMode] != ctlMode {
				t.Errorf("the %s has mode %v, want the controller's %v", side, p[protocol.PropMode], ctlMode)
			}
		}
		if st.Effective[protocol.PropSetpoint] != 23.0 || st.Effective[protocol.PropMode] != protocol.ModeCool {
			t.Errorf("the thermostat runs with %v, want setpoint 23 in mode cool", st.Effective)
		}
	})
}
