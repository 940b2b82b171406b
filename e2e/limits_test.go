package e2e

import (
	"bytes"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// memorySlack bounds how much the controllerlite process may grow while it
// is attacked: half the 256 MiB one oversize fixed header cost it before
// the packet size limit, and above the 64 MiB heap arena by which Go's
// virtual size grows on its own.
const memorySlack = 128 << 20

// TestBinaryBrokerLimits attacks the real controllerlite binary's embedded
// broker with what one valid device certificate could do to exhaust it
// (issue 9, defect 2), across the process boundary: fixed headers
// announcing huge packets and an oversize retained message (the process
// does not grow, the connection is closed at once, nothing is stored),
// retained messages on topics outside the contract (dropped, nothing
// stored, even after a restart from broker.db), and connections that never
// send CONNECT (closed by the default 10 s connect timeout).
func TestBinaryBrokerLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs controllerlite, waits for its 10 s connect timeout")
	}
	_, controllerBin := binaries(t)
	w := newBareWorld(t, embedded)
	addr := w.brokerAddr()
	dataDir := t.TempDir()
	var ctl *process
	serve := func() {
		t.Helper()
		ctl = spawn(t, "controllerlite", controllerBin, "serve", "--ca", w.pki.CAFile, "--cert", w.pki.ServerCert, "--key", w.pki.ServerKey,
			"--listen", addr, "--data-dir", dataDir, "--http", "127.0.0.1:0", "--log-level", "debug")
		ctl.line("controllerlite: mqtt broker listening on")
		apiAddr := ctl.line("controllerlite: http listening on")
		ctl.line("controllerlite: ready")
		var err error
		if w.api, err = api.NewClient(apiAddr, ""); err != nil {
			t.Fatal(err)
		}
	}
	serve()
	memory := func() (virtual, resident uint64) {
		t.Helper()
		v, r, err := testenv.ProcessMemory(ctl.cmd.Process.Pid)
		if err != nil {
			t.Fatal(err)
		}
		return v, r
	}
	d8Cert, d8Key := w.pki.Client(t, "d8")

	// Connections that never send CONNECT, opened first: the connect
	// timeout closes them while the rest of the test runs.
	opened := time.Now()
	idle := map[string]net.Conn{
		"TCP without a TLS handshake": testenv.DialTCP(t, addr),
		"TLS without CONNECT":         w.pki.DialRawTLS(t, addr, d8Cert, d8Key),
	}

	// d9's legitimate retained event: the controller takes it.
	d9 := w.pki.Connect(t, w.brokerURL(), "d9")
	const event = `{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":21,"w":[0,1]}},"src":"local"}`
	d9.Publish(t, "thermo/d9/event", 1, true, []byte(event))
	eventually(t, "the controller to take d9's event", func() (bool, string) {
		c, err := w.ctl("d9")
		return err == nil && c.VC == protocol.Clock{1, 1}, fmt.Sprintf("%+v %v", c, err)
	})

	t.Run("oversize packets", func(t *testing.T) {
		virtual0, resident0 := memory()
		tests := []struct {
			name    string
			connect bool
			send    []byte
		}{
			{"5-byte header before CONNECT", false, testenv.OversizeHeader},
			{"5-byte header before CONNECT, again", false, testenv.OversizeHeader},
			{"5-byte header before CONNECT, a third time", false, testenv.OversizeHeader},
			{"PUBLISH header announcing 256 MiB", true, testenv.Header(0x31, 268_435_455)},
			{"retained PUBLISH of 100 MB, its first 64 KiB", true,
				append(testenv.Header(0x31, 100<<20), bytes.Repeat([]byte("x"), 64<<10)...)},
			{"retained PUBLISH of 100 KB", true, testenv.PublishPacket("thermo/d8/event", bytes.Repeat([]byte("x"), 100_000), 1, true)},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				c := w.pki.DialRawTLS(t, addr, d8Cert, d8Key)
				if tc.connect {
					testenv.RawConnect(t, c, "d8")
				}
				closed, after := true, time.Duration(0)
				if err := testenv.RawWriteErr(c, tc.send); err != nil {
					t.Logf("closed while the packet was sent: %v", err)
				} else {
					closed, after = testenv.WaitClosed(c, waitTimeout)
				}
				virtual, resident := memory()
				t.Logf("closed %v after %v; controllerlite virtual %d MiB (%+d KiB), resident %d MiB (%+d KiB)",
					closed, after, virtual>>20, (int64(virtual)-int64(virtual0))>>10, resident>>20, (int64(resident)-int64(resident0))>>10)
				if !closed || after > 5*time.Second {
					t.Errorf("connection closed %v after %v: want it closed at once", closed, after)
				}
				if virtual > virtual0+memorySlack || resident > resident0+memorySlack {
					t.Errorf("controllerlite grew from %d/%d MiB (virtual/resident) to %d/%d MiB", virtual0>>20, resident0>>20, virtual>>20, resident>>20)
				}
			})
		}
	})

	t.Run("topics outside the contract", func(t *testing.T) {
		junk := bytes.Repeat([]byte("j"), protocol.MaxPayload)
		for _, tc := range []struct {
			topic  string
			retain bool
		}{
			{"thermo/d9/junk/1", true},
			{"thermo/d9/junk/2", true},
			{"thermo/d9/junk", true},
			{"thermo/d9/telemetry", true}, // telemetry is never retained
			{"thermo/d9/cmd", true},
			{"thermo/d8/event", true},
			{"thermo/d9", true},
		} {
			// Acknowledged and dropped, as Mosquitto does: an error would
			// make paho resend it on every reconnect.
			if err := d9.PublishErr(tc.topic, 1, tc.retain, junk); err != nil {
				t.Fatalf("publish on %s: %v, want it acknowledged", tc.topic, err)
			}
		}
		if !d9.Paho.IsConnectionOpen() {
			t.Fatal("d9 was disconnected")
		}
	})

	t.Run("connections without CONNECT", func(t *testing.T) {
		for name, c := range idle {
			// At least a moment, so that a connection closed long ago reads
			// as closed rather than as a deadline already past.
			closed, _ := testenv.WaitClosed(c, max(broker.DefaultConnectTimeout+waitTimeout-time.Since(opened), time.Second))
			after := time.Since(opened)
			t.Logf("%s: closed %v after %v", name, closed, after)
			if !closed || after < broker.DefaultConnectTimeout-time.Second {
				t.Errorf("%s: closed %v after %v, want closed by the %v connect timeout", name, closed, after, broker.DefaultConnectTimeout)
			}
		}
	})

	// Nothing of the above was retained, before or after a restart that
	// reads broker.db: the controller's certificate reads every retained
	// message under the root, then its own live marker.
	retained := func(t *testing.T) map[string]int {
		t.Helper()
		c := w.pki.Connect(t, w.brokerURL(), protocol.ControllerID)
		defer c.Close()
		c.Subscribe(t, "thermo/#", 1)
		c.Publish(t, "thermo/marker/cmd", 1, false, []byte("marker"))
		_, before := c.WaitPayload(t, "thermo/marker/cmd", "marker")
		got := map[string]int{}
		for _, m := range before {
			if m.Retained {
				got[m.Topic] = len(m.Payload)
			}
		}
		return got
	}
	want := map[string]int{"thermo/d9/event": len(event)}
	if got := retained(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("retained (topic: bytes) %v, want %v", got, want)
	}
	d9.Close()
	ctl.kill9()
	serve()
	if got := retained(t); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("after a restart, retained (topic: bytes) %v, want %v", got, want)
	}
}
