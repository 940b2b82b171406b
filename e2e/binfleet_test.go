package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/protocol"
)

// binController is a real controllerlite process: with the embedded broker
// it is the broker too; with Mosquitto it connects to the world's broker.
type binController struct {
	*process
	w       *world
	bin     string
	dataDir string
	apiAddr string
}

// startBinController runs `controllerlite serve` for the world's broker
// kind and waits until it is ready. extra flags go last.
func startBinController(t *testing.T, w *world, dataDir string, extra ...string) *binController {
	t.Helper()
	_, controllerBin := binaries(t)
	args := []string{controllerBin, "serve", "--ca", w.pki.CAFile, "--data-dir", dataDir, "--http", "127.0.0.1:0", "--log-level", "debug"}
	switch w.kind {
	case embedded:
		args = append(args, "--cert", w.pki.ServerCert, "--key", w.pki.ServerKey, "--listen", w.brokerAddr())
	case mosquitto:
		cert, key := w.pki.Client(t, protocol.ControllerID)
		args = append(args, "--cert", cert, "--key", key, "--broker", w.brokerURL())
	}
	c := &binController{process: spawn(t, "controllerlite", append(args, extra...)...), w: w, bin: controllerBin, dataDir: dataDir}
	if w.kind == embedded {
		if got := c.line("controllerlite: mqtt broker listening on"); got != w.brokerAddr() {
			t.Fatalf("embedded broker on %s, want %s", got, w.brokerAddr())
		}
	}
	c.apiAddr = c.line("controllerlite: http listening on")
	c.line("controllerlite: ready")
	var err error
	if w.api, err = api.NewClient(c.apiAddr, ""); err != nil {
		t.Fatal(err)
	}
	return c
}

// binThermostat is a real `thermostat run --hal sim` process.
type binThermostat struct {
	*process
	t      *testing.T
	w      *world
	id     string
	bin    string
	dir    string
	socket string
	args   []string
}

// newBinThermostat prepares a thermostat for device id with its own
// certificate and state directory; start runs it.
func newBinThermostat(t *testing.T, w *world, id string, extra ...string) *binThermostat {
	t.Helper()
	thermostatBin, _ := binaries(t)
	cert, key := w.pki.Client(t, id)
	dir := t.TempDir()
	d := &binThermostat{t: t, w: w, id: id, bin: thermostatBin, dir: dir, socket: filepath.Join(dir, "ctl.sock")}
	d.args = append([]string{thermostatBin, "run", "--hal", "sim", "--broker", w.brokerURL(),
		"--ca", w.pki.CAFile, "--cert", cert, "--key", key, "--state-dir", filepath.Join(dir, "state"),
		"--control-socket", d.socket, "--log-level", "debug"}, extra...)
	return d
}

func (d *binThermostat) start() *binThermostat {
	d.process = spawn(d.t, "thermostat-"+d.id, d.args...)
	return d
}

// stop ends the thermostat with SIGTERM, as systemd does, and waits.
func (d *binThermostat) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(waitTimeout):
		d.t.Fatalf("%s did not stop on SIGTERM", d.name)
	}
}

// status asks the running agent through `thermostat status`.
func (d *binThermostat) status() (agent.Status, error) {
	var st agent.Status
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, d.bin, "status", "--control-socket", d.socket).Output()
	if err != nil {
		return st, err
	}
	return st, json.Unmarshal(out, &st)
}

// synced waits until the thermostat and the controller agree on its
// properties, both connected.
func (d *binThermostat) synced() (agent.Status, fleet.Device) {
	d.t.Helper()
	var st agent.Status
	var c fleet.Device
	eventually(d.t, d.id+": thermostat and controller in agreement", func() (bool, string) {
		var err error
		if st, err = d.status(); err != nil {
			return false, err.Error()
		}
		if c, err = d.w.ctl(d.id); err != nil {
			return false, err.Error()
		}
		return st.Connected && !st.Rejoining && c.Online && sameProps(st.Props, c.Props),
			fmt.Sprintf("thermostat %v %v connected=%v rejoining=%v; controller %v %v online=%v",
				st.VC, st.Props, st.Connected, st.Rejoining, c.VC, c.Props, c.Online)
	})
	return st, c
}

// alive fails the test if the process has exited.
func (p *process) alive() {
	p.t.Helper()
	select {
	case <-p.done:
		p.t.Fatalf("%s exited: %v", p.name, p.cmd.ProcessState)
	default:
	}
}

// logText returns what the process has logged so far.
func (p *process) logText() string {
	b, err := os.ReadFile(p.log)
	if err != nil {
		p.t.Fatal(err)
	}
	return string(b)
}
