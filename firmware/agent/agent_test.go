package agent

import (
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

func vc(c, d uint64) protocol.Clock { return protocol.Clock{c, d} }

func checkProp(t *testing.T, props protocol.Props, name string, val any, w protocol.Clock) {
	t.Helper()
	p, ok := props[name]
	if !ok || p.Val != val || p.W != w {
		t.Errorf("%s = %+v (present %v), want %v stamped %v", name, p, ok, val, w)
	}
}

// TestConnect: on connect a device announces itself with status online,
// sends its full state as an Event and reports telemetry, then telemetry
// every interval; a clean stop leaves status offline.
func TestConnect(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		ctl := newController(t, e, "d1")
		d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})

		ctl.WaitPayload(t, "thermo/d1/status", `{"v":1,"online":true}`)
		ev, before := ctl.waitEvent(vc(0, 1))
		if len(before) != 0 {
			t.Errorf("events before the connect event: %v", before)
		}
		checkProp(t, ev.Props, protocol.PropSetpoint, 20.0, vc(0, 0))
		checkProp(t, ev.Props, protocol.PropMode, "off", vc(0, 0))
		if st := d.status(); st.VC != vc(0, 1) || !st.Connected || st.Rejoining {
			t.Errorf("status %+v", st)
		}

		m, _ := ctl.WaitFor(t, "thermo/d1/telemetry")
		tel, err := protocol.DecodeTelemetry(m.Payload)
		if err != nil {
			t.Fatal(err)
		}
		if tel.TempC == nil || *tel.TempC != 20.31 || !tel.Heat || tel.Cool || !tel.SensorOK || m.Retained || m.QoS != 0 {
			t.Errorf("telemetry %s (retained %v qos %d)", m.Payload, m.Retained, m.QoS)
		}

		// One more every interval.
		ctl.Reset()
		if !d.clock.WaitPending(1, testenv.WaitTimeout) {
			t.Fatal("no telemetry timer")
		}
		d.clock.Advance(DefaultTelemetryInterval)
		ctl.WaitFor(t, "thermo/d1/telemetry")

		// And whenever the outputs change.
		ctl.Reset()
		d.agent.OutputsChanged(control.Snapshot{Time: time.Now(), SensorOK: false})
		// Matched by content: the sensor_fault alert this raises sends the
		// fake loop's own (unchanged) snapshot too, sometimes first.
		m, _ = ctl.WaitMatch(t, "telemetry of the output change", func(m testenv.Message) bool {
			return m.Topic == "thermo/d1/telemetry" && strings.Contains(string(m.Payload), `"sensor_ok":false`)
		})
		if tel, err := protocol.DecodeTelemetry(m.Payload); err != nil || tel.SensorOK || tel.TempC != nil || tel.Heat {
			t.Errorf("telemetry on output change %s: %v", m.Payload, err)
		}

		ctl.Reset()
		d.stop()
		m, _ = ctl.WaitFor(t, "thermo/d1/status")
		if string(m.Payload) != `{"v":1,"online":false}` {
			t.Errorf("status after a clean stop %s", m.Payload)
		}
	})
}

// TestCommands: a command that changes a property is applied and answered
// with an Event; one whose values lose to the device's concurrent writes is
// discarded and answered with nothing; a duplicate changes nothing. The
// clocks of the events prove what was and was not sent.
func TestCommands(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		ctl := newController(t, e, "d1")
		d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
		ctl.waitEvent(vc(0, 1))

		c1 := `{"v":1,"vc":[2,1],"props":{"setpoint_c":{"val":23,"w":[2,1]},"mode":{"val":"heat","w":[2,1]}},"src":"controller"}`
		ctl.command(c1, true)
		// Receive: [2,1] merged then own+1 = [2,2]; applied, so the event is [2,3].
		ev, _ := ctl.waitEvent(vc(2, 3))
		checkProp(t, ev.Props, protocol.PropSetpoint, 23.0, vc(2, 1))
		checkProp(t, ev.Props, protocol.PropMode, "heat", vc(2, 1))
		if ev.Src != protocol.SrcController {
			t.Errorf("src %q", ev.Src)
		}
		testenv.WaitFor(t, "settings applied", func() bool { return d.therm.Settings() == control.Settings{SetpointC: 23, Mode: "heat"} })

		// A local change: write and send at once, [2,4].
		d.set(map[string]any{protocol.PropSetpoint: 19})
		ev, _ = ctl.waitEvent(vc(2, 4))
		checkProp(t, ev.Props, protocol.PropSetpoint, 19.0, vc(2, 4))
		if ev.Src != protocol.SrcLocal {
			t.Errorf("src %q", ev.Src)
		}
		after := len(ctl.events())

		// Concurrent with the local write: discarded, clock [3,5], no event.
		ctl.command(`{"v":1,"vc":[3,1],"props":{"setpoint_c":{"val":30,"w":[3,1]}}}`, true)
		testenv.WaitFor(t, "discard", func() bool { return d.status().VC == vc(3, 5) })
		// A duplicate of c1: nothing changes.
		ctl.command(c1, true)
		testenv.WaitFor(t, "duplicate", func() bool { return d.status().Counters.Duplicates == 1 })
		if c := d.status().Counters; c.Discarded != 1 {
			t.Errorf("counters %+v, want one discard", c)
		}
		if st := d.status(); st.VC != vc(3, 5) || st.Effective[protocol.PropSetpoint] != 19.0 {
			t.Fatalf("after discard and duplicate: vc %v effective %v", st.VC, st.Effective)
		}
		// A marker command that applies: [4,6] then the event [4,7]. Had
		// anything been sent for the discard or the duplicate, the clock
		// would be higher and an event would come first.
		ctl.command(`{"v":1,"vc":[4,5],"props":{"mode":{"val":"cool","w":[4,5]},"setpoint_c":{"val":30,"w":[3,1]}}}`, true)
		ev, before := ctl.waitEvent(vc(4, 7))
		if len(before) != after {
			t.Errorf("events sent for a discarded or duplicate command: %v", before[after:])
		}
		checkProp(t, ev.Props, protocol.PropSetpoint, 19.0, vc(2, 4))
		checkProp(t, ev.Props, protocol.PropMode, "cool", vc(4, 5))
		if got := d.therm.Settings(); got != (control.Settings{SetpointC: 19, Mode: "cool"}) {
			t.Errorf("thermostat settings %+v", got)
		}
		if c := d.status().Counters; c.Applied != 2 || c.Rejected != 0 {
			t.Errorf("counters %+v", c)
		}
	})
}

// TestLocalSetWhileBrokerDown: a change made with the broker gone is
// acknowledged at once and reaches the broker when it comes back.
func TestLocalSetWhileBrokerDown(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		ctl := newController(t, e, "d1")
		d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
		ctl.waitEvent(vc(0, 1))
		ctl.Close()

		e.down()
		d.waitConnected(false)
		d.set(map[string]any{protocol.PropSetpoint: 26.5, protocol.PropMode: "heat"})
		if got := d.therm.Settings(); got != (control.Settings{SetpointC: 26.5, Mode: "heat"}) {
			t.Errorf("the thermostat runs with %+v while offline", got)
		}
		// Written while offline: [0,2]; sent on the next connect: [0,3].
		if st := d.status(); st.VC != vc(0, 2) || st.Connected {
			t.Errorf("offline status %+v", st)
		}

		e.up()
		ctl = newController(t, e, "d1")
		ev, _ := ctl.waitEvent(vc(0, 3))
		checkProp(t, ev.Props, protocol.PropSetpoint, 26.5, vc(0, 2))
		checkProp(t, ev.Props, protocol.PropMode, "heat", vc(0, 2))
		ctl.WaitPayload(t, "thermo/d1/status", `{"v":1,"online":true}`)
	})
}

// TestBadMessages: malformed, oversized and invalid commands are rejected
// whole, logged and counted, and change nothing, the clock included; a
// property out of range is rejected alone and the message still counts
// as a receive.
func TestBadMessages(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		ctl := newController(t, e, "d1")
		d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
		ctl.waitEvent(vc(0, 1))
		n := len(ctl.events())

		whole := []struct{ name, payload string }{
			{"not json", `{"v":1,"vc":[1,1],`},
			{"oversized", `{"v":1,"vc":[1,1],"props":{},"pad":"` + strings.Repeat("x", protocol.MaxPayload) + `"}`},
			{"wrong v", `{"v":2,"vc":[1,1],"props":{}}`},
			{"no v", `{"vc":[1,1],"props":{}}`},
			{"no vc", `{"v":1,"props":{"mode":{"val":"heat","w":[1,0]}}}`},
			{"fractional clock", `{"v":1,"vc":[2.0,1],"props":{}}`},
			{"negative clock", `{"v":1,"vc":[-1,1],"props":{}}`},
			{"props not an object", `{"v":1,"vc":[1,1],"props":[1]}`},
			{"not an object", `[1,2]`},
		}
		for i, tc := range whole {
			ctl.command(tc.payload, false)
			testenv.WaitFor(t, tc.name+" rejected", func() bool { return d.status().Counters.Rejected == uint64(i+1) })
			if st := d.status(); st.VC != vc(0, 1) || st.Effective[protocol.PropMode] != "off" {
				t.Fatalf("%s changed the state: %+v", tc.name, st)
			}
		}

		// Out of range and the wrong type: rejected alone; the receive
		// still merges the clock ([5,1] then own+1: [5,2]) but applies
		// nothing, so no event.
		ctl.command(`{"v":1,"vc":[5,1],"props":{"setpoint_c":{"val":99,"w":[5,1]},"mode":{"val":7,"w":[5,1]}}}`, false)
		testenv.WaitFor(t, "properties rejected", func() bool {
			st := d.status()
			return st.Counters.RejectedProps == 2 && st.VC != vc(0, 1)
		})
		if st := d.status(); st.VC != vc(5, 2) || st.Effective[protocol.PropSetpoint] != 20.0 || st.Effective[protocol.PropMode] != "off" {
			t.Fatalf("after out-of-range values: %+v", st)
		}

		// Marker: applied, [6,3] then event [6,4], the first since connect.
		ctl.command(`{"v":1,"vc":[6,2],"props":{"mode":{"val":"auto","w":[6,2]}}}`, false)
		ev, before := ctl.waitEvent(vc(6, 4))
		if len(before) != n {
			t.Errorf("events sent for rejected messages: %v", before[n:])
		}
		checkProp(t, ev.Props, protocol.PropMode, "auto", vc(6, 2))
		checkProp(t, ev.Props, protocol.PropSetpoint, 20.0, vc(0, 0))
		if c := d.status().Counters; c.Rejected != uint64(len(whole)) {
			t.Errorf("counters %+v", c)
		}
	})
}
