package agent

import (
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestRejoin: a device that lost its state (a wiped state directory)
// sends no Event until it has caught up, as PROTOCOL.md says, so its next
// write is never taken for a duplicate.
func TestRejoin(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		t.Run("own retained event ends the wait", func(t *testing.T) {
			ctl := newController(t, e, "d1")
			old := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
			ctl.waitEvent(vc(0, 1))
			old.set(map[string]any{protocol.PropSetpoint: 22.5})
			ctl.waitEvent(vc(0, 2))
			old.stop()
			n := len(ctl.events())

			// Re-imaged: same certificate, empty state directory.
			d := startDevice(t, e, "d1", t.TempDir(), nil, devOpts{})
			// Merges [0,2] into [0,0] then own+1: [0,3]; the wait ends and the
			// event goes out at [0,4], after everything the old one announced.
			ev, before := ctl.waitEvent(vc(0, 4))
			if len(before) != n {
				t.Errorf("events while rejoining: %v", before[n:])
			}
			checkProp(t, ev.Props, protocol.PropSetpoint, 22.5, vc(0, 2))
			if st := d.status(); st.Rejoining || st.VC != vc(0, 4) {
				t.Errorf("status after rejoin %+v", st)
			}
			if got := d.therm.Settings(); got.SetpointC != 22.5 {
				t.Errorf("thermostat settings %+v", got)
			}
			d.set(map[string]any{protocol.PropMode: "heat"})
			ctl.waitEvent(vc(0, 5))
		})

		t.Run("retained command does not end the wait, the timeout does", func(t *testing.T) {
			ctl := newController(t, e, "d2")
			ctl.command(`{"v":1,"vc":[1,0],"props":{"setpoint_c":{"val":25,"w":[1,0]}}}`, true)
			d := startDevice(t, e, "d2", t.TempDir(), nil, devOpts{syncTimeout: 10 * time.Second})
			testenv.WaitFor(t, "retained command merged", func() bool { return d.status().VC == vc(1, 1) })
			st := d.status()
			if !st.Rejoining || st.Effective[protocol.PropSetpoint] != 25.0 {
				t.Fatalf("status after the retained command %+v", st)
			}
			// A local write while rejoining waits, unstamped, and the
			// thermostat runs with it at once.
			d.set(map[string]any{protocol.PropMode: "heat"})
			st = d.status()
			if st.Pending[protocol.PropMode] != "heat" || st.VC != vc(1, 1) {
				t.Errorf("pending write: %+v", st)
			}
			if got := d.therm.Settings(); got != (control.Settings{SetpointC: 25, Mode: "heat"}) {
				t.Errorf("thermostat settings %+v", got)
			}
			if len(ctl.events()) != 0 {
				t.Fatalf("events while rejoining: %v", ctl.events())
			}

			if !d.clock.WaitPending(2, testenv.WaitTimeout) { // telemetry and sync timeout
				t.Fatal("no sync timer")
			}
			d.clock.Advance(10 * time.Second)
			// The pending write is stamped after the merge ([1,2]) and sent ([1,3]).
			ev, before := ctl.waitEvent(vc(1, 3))
			if len(before) != 0 {
				t.Errorf("events before the timeout: %v", before)
			}
			checkProp(t, ev.Props, protocol.PropSetpoint, 25.0, vc(1, 0))
			checkProp(t, ev.Props, protocol.PropMode, "heat", vc(1, 2))
			if st := d.status(); st.Rejoining || len(st.Pending) != 0 {
				t.Errorf("status after the timeout %+v", st)
			}
		})

		t.Run("live command ends the wait", func(t *testing.T) {
			ctl := newController(t, e, "d3")
			d := startDevice(t, e, "d3", t.TempDir(), nil, devOpts{})
			d.waitConnected(true)
			// The subscription completes just after the connection: repeat
			// the live command until one arrives (the rest are duplicates).
			deadline := time.Now().Add(testenv.WaitTimeout)
			for d.status().Rejoining {
				if time.Now().After(deadline) {
					t.Fatal("a live command did not end the rejoin")
				}
				ctl.command(`{"v":1,"vc":[1,0],"props":{"mode":{"val":"cool","w":[1,0]}}}`, false)
				testenv.PollUpTo(200*time.Millisecond, func() bool { return !d.status().Rejoining })
			}
			ev, before := ctl.waitEvent(vc(1, 2))
			if len(before) != 0 {
				t.Errorf("events before the live command: %v", before)
			}
			checkProp(t, ev.Props, protocol.PropMode, "cool", vc(1, 0))
			checkProp(t, ev.Props, protocol.PropSetpoint, 20.0, vc(0, 0))
		})
	})
}
