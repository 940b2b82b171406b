package e2e

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

// TestControlSocketFlood is issue 9's fourth defect against the real
// binary: under `prlimit --nofile=128:128`, 200 connections held open on
// the control socket used to end the thermostat ("accept: too many open
// files", outputs off). Now the socket serves a bounded number at once
// (the rest wait unaccepted) and retries failed accepts: the thermostat
// keeps running and syncing meanwhile, and answers `thermostat status` once
// the connections close.
func TestControlSocketFlood(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("util-linux prlimit is not installed")
	}
	w := newBareWorld(t, embedded) // the socket is local: one broker is enough
	ctl := startBinController(t, w, t.TempDir())
	d := newBinThermostat(t, w, "d1")
	d.args = append([]string{prlimit, "--nofile=128:128"}, d.args...)
	d.start()
	d.synced()
	limits, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(strings.Fields(string(limits)), " "), "Max open files 128 128") {
		t.Fatalf("the limit did not take:\n%s", limits)
	}

	conns := make([]net.Conn, 0, 200)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := range 200 {
		c, err := net.Dial("unix", d.socket)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	// While they are held the thermostat runs on: a write from the
	// controller reaches it over MQTT.
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "18.5")
	eventually(t, "d1 to apply the controller's write during the flood", func() (bool, string) {
		d.alive()
		c := w.mustCtl(d.id)
		sp, _ := setpoint(c.Props)
		return sp == 18.5 && c.Online && !c.Pending, fmt.Sprintf("%v %v online=%v pending=%v", c.VC, c.Props, c.Online, c.Pending)
	})

	for _, c := range conns {
		c.Close()
	}
	conns = nil
	eventually(t, "thermostat status to answer after the flood", func() (bool, string) {
		d.alive()
		st, err := d.status()
		if err != nil {
			return false, err.Error()
		}
		sp, _ := setpoint(st.Props)
		return sp == 18.5 && st.Connected, fmt.Sprintf("%v %v connected=%v", st.VC, st.Props, st.Connected)
	})
	// And a local change works again, end to end.
	command(t, d.bin, "set", "--control-socket", d.socket, "--setpoint", "21.5")
	d.synced()
	if st, _ := d.status(); st.Effective[protocol.PropSetpoint] != 21.5 {
		t.Errorf("effective %v after the local set", st.Effective)
	}
	d.alive()
}
