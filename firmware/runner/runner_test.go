package runner

import (
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestThermostatOnTheSimulatedBoard runs the whole thermostat in process
// against the embedded broker: a local set through the control socket
// reaches the broker and switches the heat on (telemetry follows at once),
// a burst of button presses becomes one event with src "button", and a
// clean stop publishes status offline and leaves every output off.
func TestThermostatOnTheSimulatedBoard(t *testing.T) {
	pki := testenv.NewPKI(t)
	_, url := startBroker(t, pki)
	ctl := pki.Connect(t, url, protocol.ControllerID)
	ctl.Subscribe(t, "thermo/t1/#", 1)

	cert, key := pki.Client(t, "t1")
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Broker, cfg.CA, cfg.Cert, cfg.Key = url, pki.CAFile, cert, key
	cfg.HAL = config.HALSim
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.ControlSocket = filepath.Join(dir, "ctl.sock")
	cfg.SyncTimeout = 100 * time.Millisecond // first boot: nobody to hear from
	cfg.Control.Interval = 100 * time.Millisecond
	cfg.Control.ButtonWindow = 50 * time.Millisecond
	cfg.Control.SensorTimeout = time.Second
	cfg.Control.Heat.MinOff = time.Millisecond // no rest from the loop start
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	board, err := sim.New(sim.Options{InitialC: 18})
	if err != nil {
		t.Fatal(err)
	}
	th, err := New(cfg, Options{Logger: quiet(), Board: board, BoardClock: board.Clock()})
	if err != nil {
		t.Fatal(err)
	}
	if th.ID != "t1" {
		t.Fatalf("device id %q, want the certificate's CN", th.ID)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- th.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()

	isEvent := func(pred func(protocol.Message) bool) func(testenv.Message) bool {
		return func(m testenv.Message) bool {
			ev, _, err := protocol.DecodeMessage(m.Payload)
			return m.Topic == "thermo/t1/event" && err == nil && pred(ev)
		}
	}
	// The rejoin of a first boot times out and the defaults go out.
	ctl.WaitMatch(t, "first event", isEvent(func(protocol.Message) bool { return true }))

	reqCtx, reqCancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer reqCancel()
	if _, err := localctl.Do(reqCtx, cfg.ControlSocket, localctl.Request{Op: localctl.OpSet, Set: map[string]any{"setpoint_c": 21, "mode": "heat"}}); err != nil {
		t.Fatal(err)
	}
	ctl.WaitMatch(t, "local set", isEvent(func(ev protocol.Message) bool {
		sp, _ := ev.Props.Setpoint()
		md, _ := ev.Props.Mode()
		return sp == 21 && md == "heat" && ev.Src == protocol.SrcLocal
	}))
	// 18 °C with the setpoint at 21 in heat mode: the heat goes on and
	// telemetry reports it without waiting for the interval.
	ctl.WaitMatch(t, "telemetry with heat on", func(m testenv.Message) bool {
		tel, err := protocol.DecodeTelemetry(m.Payload)
		return m.Topic == "thermo/t1/telemetry" && err == nil && tel.Heat && tel.SensorOK
	})

	// Two presses within the window: one event, setpoint 22.
	board.Press(hal.ButtonUp)
	board.Press(hal.ButtonUp)
	ev, _ := ctl.WaitMatch(t, "button event", isEvent(func(ev protocol.Message) bool { return ev.Src == protocol.SrcButton }))
	got, _, _ := protocol.DecodeMessage(ev.Payload)
	if sp, _ := got.Props.Setpoint(); sp != 22 {
		t.Errorf("button burst: setpoint %v, want 22", sp)
	}
	if w, lw := got.Props[protocol.PropMode].W, got.Props[protocol.PropSetpoint].W; w == lw {
		t.Errorf("the mode was re-stamped by a setpoint-only burst: %v", got.Props)
	}
	if st := th.Agent().Snapshot(); st.Effective["setpoint_c"] != 22.0 || !st.Connected {
		t.Errorf("status after the burst %+v", st)
	}

	ctl.Reset()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	ctl.WaitPayload(t, "thermo/t1/status", `{"v":1,"online":false}`)
	if o := board.Outputs(); o != (hal.Outputs{}) {
		t.Errorf("outputs after stop: %v", o)
	}
}

// startBroker runs the embedded broker on a free loopback port with pki's
// server certificate until the test ends (Close may end it sooner), and
// returns it with its URL.
func startBroker(t *testing.T, pki *testenv.PKI) (*broker.Broker, string) {
	t.Helper()
	b, err := broker.New(broker.Options{Listen: "127.0.0.1:0", CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b, "mqtts://localhost:" + strconv.Itoa(b.Addr().(*net.TCPAddr).Port)
}
