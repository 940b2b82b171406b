package e2e

import (
	"fmt"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

// TestOffline: a command sent while the device is offline is accepted,
// retained by the broker, and applied when the device comes back; a local
// change made while the broker is down works at once on the device and
// reaches the controller when the broker is back.
func TestOffline(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newWorld(t, kind)
		d1 := w.newThermostat("d1", thermostatOptions{})
		d1.start()
		d1.waitSynced()

		t.Run("command while the device is offline", func(t *testing.T) {
			d1.stop()
			eventually(t, "the controller to see d1 offline", func() (bool, string) {
				c, err := w.ctl("d1")
				return err == nil && !c.Online, fmt.Sprintf("%+v %v", c, err)
			})
			c := w.set("d1", map[string]any{protocol.PropSetpoint: 19.5, protocol.PropMode: protocol.ModeCool})
			if c.Online || c.Pending {
				t.Fatalf("set for an offline device: online=%v pending=%v; want it accepted and handed to the broker", c.Online, c.Pending)
			}
			stamp := c.VC // written and sent at once

			mark := w.logs.mark()
			d1.start()
			// The broker hands d1 the retained Command as it subscribes,
			// before the controller even knows d1 is back.
			w.logs.wait(t, mark, "who=d1", `msg="command applied"`, fmt.Sprintf("vc=%v", stamp), "retained=true")
			st, ctl := d1.waitSynced()
			for side, p := range map[string]protocol.Props{"device": st.Props, "controller": ctl.Props} {
				sp, w := setpoint(p)
				md, _ := p.Mode()
				if sp != 19.5 || w != stamp || md != protocol.ModeCool || p[protocol.PropMode].W != stamp {
					t.Errorf("the %s has %v; want setpoint 19.5 and mode cool stamped %v", side, p, stamp)
				}
			}
			if st.Effective[protocol.PropMode] != protocol.ModeCool {
				t.Errorf("the thermostat runs with %v, want mode cool", st.Effective)
			}
		})

		t.Run("local change while the broker is down", func(t *testing.T) {
			d1.waitSynced()
			w.brokerDown()
			eventually(t, "d1 to notice the broker is gone", func() (bool, string) {
				st := d1.status()
				return !st.Connected, fmt.Sprintf("connected=%v", st.Connected)
			})
			before := d1.status().VC
			d1.set(map[string]any{protocol.PropSetpoint: 24.5})
			// Offline the write waits to be sent: own += 1, and the value is
			// stamped with that clock. The thermostat runs with it at once.
			stamp := tick(before, devSide)
			st := d1.status()
			if sp, w := setpoint(st.Props); st.VC != stamp || sp != 24.5 || w != stamp {
				t.Fatalf("offline write: device %v with setpoint %v@%v, want %v with 24.5@%v", st.VC, sp, w, stamp, stamp)
			}
			if st.Effective[protocol.PropSetpoint] != 24.5 {
				t.Fatalf("the thermostat runs with %v, want setpoint 24.5 at once", st.Effective)
			}

			w.brokerUp()
			// On reconnecting d1 sends an Event with its whole state (a
			// send: own += 1), which carries the write.
			eventually(t, "the controller to take the offline write", func() (bool, string) {
				c, err := w.ctl("d1")
				if err != nil {
					return false, err.Error()
				}
				sp, w := setpoint(c.Props)
				return sp == 24.5 && w == stamp && c.VC[devSide] >= stamp[devSide]+1, fmt.Sprintf("%v %v", c.VC, c.Props)
			})
			st, _ = d1.waitSynced()
			if st.VC[devSide] < stamp[devSide]+1 {
				t.Errorf("device clock %v after reconnecting: the Event should have been a send after %v", st.VC, stamp)
			}
		})
	})
}
