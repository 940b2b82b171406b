package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

// TestClockCounterAtTheLimit is issue 9's first attack, against the real
// binaries: a device certificate publishes an Event whose counter is
// 2^53-1, in the device's slot (which the controller would echo to the
// thermostat) and in the controller's slot (which would leave the
// controller unable to count its next write). Both are rejected whole; the
// thermostats keep running and the controller's next writes reach them.
func TestClockCounterAtTheLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		ctl := startBinController(t, w, t.TempDir())
		d3 := newBinThermostat(t, w, "d3").start()
		d4 := newBinThermostat(t, w, "d4").start()
		d3.synced()
		d4.synced()
		fl := func() fleet.Status {
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			st, err := w.api.Health(ctx)
			if err != nil {
				t.Fatal(err)
			}
			return st
		}
		before := fl()

		// The attacker holds each device's certificate. It publishes while
		// the thermostats are stopped (a session taken over while live is
		// another attack, e2e's duplicate identity test); they start again
		// from their state and meet whatever the controller then holds.
		d3.stop()
		d4.stop()
		for _, id := range []string{"d3", "d4"} {
			// Their sessions over first: a connect racing the end of the
			// old one is refused by mochi now and then.
			eventually(t, id+" offline", func() (bool, string) {
				c, err := w.ctl(id)
				return err == nil && !c.Online, fmt.Sprintf("%+v %v", c, err)
			})
		}
		for _, attack := range []struct{ id, payload string }{
			{"d4", `{"v":1,"vc":[0,9007199254740991],"props":{}}`},
			{"d3", `{"v":1,"vc":[9007199254740991,4],"props":{}}`},
		} {
			c := w.pki.Connect(t, w.brokerURL(), attack.id)
			c.Publish(t, "thermo/"+attack.id+"/event", 1, false, []byte(attack.payload))
			c.Close()
		}
		eventually(t, "both events rejected", func() (bool, string) {
			st := fl()
			return st.Rejected >= before.Rejected+2, fmt.Sprintf("%+v", st)
		})
		// The count goes up before the line is written: wait for both.
		eventually(t, "the reason logged for both", func() (bool, string) {
			n := strings.Count(ctl.logText(), "over the largest counter")
			return n >= 2, fmt.Sprintf("logged %d times, want 2", n)
		})
		for _, id := range []string{"d3", "d4"} {
			c := w.mustCtl(id)
			if c.VC[0] > protocol.MaxCounter || c.VC[1] > protocol.MaxCounter {
				t.Errorf("%s: controller clock %v took the attacker's counter", id, c.VC)
			}
		}

		// The thermostats come back and the controller's writes reach
		// them: PUT answers 200 and each device applies it.
		d3.start()
		d4.start()
		for _, d := range []*binThermostat{d3, d4} {
			var c fleet.Device
			out := command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "18.5")
			if err := json.Unmarshal([]byte(out), &c); err != nil {
				t.Fatal(err)
			}
			eventually(t, d.id+" applies the controller's write", func() (bool, string) {
				st, err := d.status()
				sp, _ := setpoint(st.Props)
				return err == nil && sp == 18.5 && st.Connected, fmt.Sprintf("%v %v %v", st.VC, st.Props, err)
			})
			d.synced()
			d.alive()
		}
	})
}
