package e2e

import (
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestBrokerFailover: the real binaries, each given two Mosquitto brokers
// that share nothing (--broker repeated). Both start on the first; it is
// killed, and while they move to the second a remote user and a person at
// the thermostat each write a property. The second broker has none of the
// first's retained messages: what brings the two sides together there is
// the contract's rejoin, the device's full state in an Event on every
// connect and the controller's greeting on every status online, with the
// clocks both kept. Neither write is lost, and both sides agree on the
// second broker.
func TestBrokerFailover(t *testing.T) {
	w := newBareWorld(t, mosquitto)
	second := testenv.StartMosquitto(t, w.pki, &testenv.MosquittoOptions{Persistence: true})
	secondURL := "mqtts://localhost:" + strconv.Itoa(second.Port())

	ctl := startBinController(t, w, t.TempDir(), "--broker", secondURL)
	d := newBinThermostat(t, w, "d1", "--broker", secondURL).start()
	d.synced()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "20")
	d.synced()

	w.mq.Kill()
	killed := time.Now()
	// The writes race the failover: made wherever each side is then.
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "18.5")
	command(t, d.bin, "set", "--control-socket", d.socket, "--mode", "cool")

	for _, p := range []*process{ctl.process, d.process} {
		p.waitConnectedTo(t, "localhost:"+strconv.Itoa(second.Port()))
	}
	t.Logf("both connected to their next broker %v after the kill (polled)", time.Since(killed).Round(time.Millisecond))
	bothWrites(t, d)
	t.Logf("both writes on both sides %v after the kill", time.Since(killed).Round(time.Millisecond))
	// The second broker now holds the device's state as retained: a
	// controller restarted on it alone would read it.
	probe := w.pki.Connect(t, secondURL, protocol.ControllerID)
	probe.Subscribe(t, "thermo/d1/event", 1)
	probe.WaitMatch(t, "d1's retained event with both writes", func(m testenv.Message) bool {
		return m.Topic == "thermo/d1/event" && strings.Contains(string(m.Payload), `"cool"`) && strings.Contains(string(m.Payload), "18.5")
	})
}

// TestNamedController: `controllerlite pki controller --name b` issues CN
// controller-b; Mosquitto, told of it (pki mosquitto --controller), gives it
// the controller's rights, and `serve --broker` runs with it as the fleet's
// controller: a device syncs and a write reaches it.
func TestNamedController(t *testing.T) {
	w := newBareWorld(t, mosquitto, func(w *world) { w.mqControllers = []string{"controller-b"} })
	_, controllerBin := binaries(t)
	caDir := filepath.Join(w.pki.Dir, "ca")
	out := command(t, controllerBin, "pki", "controller", "--name", "b", "--dir", caDir)
	cert, key := filepath.Join(caDir, "controller-b.crt"), filepath.Join(caDir, "controller-b.key")
	if !strings.Contains(out, "CN=controller-b") || !strings.Contains(out, cert) {
		t.Fatalf("pki controller --name b said:\n%s", out)
	}
	ctl := startBinController(t, w, t.TempDir(), "--cert", cert, "--key", key)
	d := newBinThermostat(t, w, "d1").start()
	d.synced()
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "19.5")
	st, _ := d.synced()
	if sp, _ := setpoint(st.Props); sp != 19.5 {
		t.Fatalf("thermostat %v after the write", st.Props)
	}
	if !strings.Contains(ctl.logText(), "client=controller-b") {
		t.Errorf("the controller's log does not name its client id controller-b")
	}
	if _, err := w.ctl("controller-b"); err == nil {
		t.Errorf("controller-b is listed as a device")
	}
}

// waitConnectedTo waits until p's log says it connected to the broker at
// addr (HOST:PORT), failing at once if p died.
func (p *process) waitConnectedTo(t *testing.T, addr string) {
	t.Helper()
	want := "broker=" + addr
	eventually(t, p.name+" connected to "+addr, func() (bool, string) {
		p.alive()
		for _, l := range strings.Split(p.logText(), "\n") {
			if strings.Contains(l, "msg=connected ") && strings.Contains(l, want) {
				return true, ""
			}
		}
		return false, "no line connected " + want
	})
}

// bothWrites waits until the controller's setpoint 18.5 and the
// thermostat's mode cool, made on either side of a broker failover, are
// on both sides.
func bothWrites(t *testing.T, d *binThermostat) {
	t.Helper()
	eventually(t, "both writes on both sides", func() (bool, string) {
		st, c := d.synced()
		sp, _ := setpoint(c.Props)
		mode, _ := c.Props.Mode()
		return sp == 18.5 && mode == protocol.ModeCool, fmt.Sprintf("thermostat %v, controller %v", st.Props, c.Props)
	})
}
