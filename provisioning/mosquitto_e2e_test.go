package provisioning_test

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// TestMosquittoAcceptsDevicesAndEnforcesACL runs a real Mosquitto with the
// generated configuration: a device and the controller talk, the ACL keeps a
// device to its own topics.
func TestMosquittoAcceptsDevicesAndEnforcesACL(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Verbose: true})

	ctl := pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	ctl.Subscribe(t, "thermo/#", 1)
	d1 := pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d2 := pki.Connect(t, mq.URL(), "d2")
	d2.Subscribe(t, "thermo/d2/#", 1)

	// Device to controller on its own topic.
	d1.Publish(t, "thermo/d1/event", 1, false, []byte("from d1"))
	if m, _ := ctl.WaitFor(t, "thermo/d1/event"); string(m.Payload) != "from d1" {
		t.Errorf("controller got %q on thermo/d1/event, want %q", m.Payload, "from d1")
	}
	// Controller to device.
	ctl.Publish(t, "thermo/d1/cmd", 1, false, []byte("to d1"))
	if m, _ := d1.WaitFor(t, "thermo/d1/cmd"); string(m.Payload) != "to d1" {
		t.Errorf("d1 got %q on thermo/d1/cmd, want %q", m.Payload, "to d1")
	}

	// d1 writes on d2's topics: Mosquitto acks and drops it. d1's marker on
	// its own topic is processed after, so once the marker is delivered the
	// forbidden message would have been too.
	forbidden := []struct{ topic string }{{"thermo/d2/cmd"}, {"thermo/d2/event"}, {"thermo/other"}, {"elsewhere/x"}}
	for _, f := range forbidden {
		if err := d1.PublishErr(f.topic, 1, false, []byte("forged")); err != nil {
			t.Fatalf("forbidden publish to %s: Mosquitto should ack and drop it, got %v", f.topic, err)
		}
	}
	d1.Publish(t, "thermo/d1/event", 1, false, []byte("marker"))
	_, before := ctl.WaitPayload(t, "thermo/d1/event", "marker")
	for _, m := range append(before, d2.Messages()...) {
		if string(m.Payload) == "forged" {
			t.Errorf("forbidden publish delivered on %s", m.Topic)
		}
	}

	// d1 cannot read d2's topics: whether or not the broker refuses the
	// subscription, d2's command never reaches d1. The controller's next
	// command to d1 comes after it on the same connection.
	_ = d1.SubscribeErr("thermo/d2/cmd", 1) // Mosquitto 2.0.11 grants it and filters deliveries
	ctl.Publish(t, "thermo/d2/cmd", 1, false, []byte("for d2 only"))
	ctl.Publish(t, "thermo/d1/cmd", 1, false, []byte("marker"))
	d2.WaitPayload(t, "thermo/d2/cmd", "for d2 only")
	d1.WaitPayload(t, "thermo/d1/cmd", "marker")
	for _, m := range d1.Messages() {
		if m.Topic != "thermo/d1/cmd" {
			t.Errorf("d1 received %q on %s", m.Payload, m.Topic)
		}
	}
}

// TestMosquittoRefusesClients checks that the generated configuration
// refuses every client without a certificate from the fleet CA.
func TestMosquittoRefusesClients(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, nil)
	foreignCert, foreignKey := pki.ForeignClient(t, "d1")
	expiredCert, expiredKey := pki.ExpiredClient(t, "d1")
	tests := []struct {
		name string
		opts testenv.ClientOptions
	}{
		{"no certificate", testenv.ClientOptions{CAFile: pki.CAFile, ClientID: "d1"}},
		{"certificate from another CA", testenv.ClientOptions{CAFile: pki.CAFile, CertFile: foreignCert, KeyFile: foreignKey}},
		{"expired certificate", testenv.ClientOptions{CAFile: pki.CAFile, CertFile: expiredCert, KeyFile: expiredKey}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := testenv.Dial(mq.URL(), tt.opts)
			if err == nil {
				c.Close()
				t.Fatal("connected; want the broker to refuse")
			}
		})
	}
	// The broker still serves good clients afterwards.
	pki.Connect(t, mq.URL(), "d1")
}

// TestMosquittoServerCertificateVerified checks the client side: the broker's
// certificate verifies by host name against the fleet CA, and not against
// another CA or for a name it was not issued for.
func TestMosquittoServerCertificateVerified(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, nil)
	certFile, keyFile := pki.Client(t, "d1")
	tests := []struct {
		name       string
		caFile     string
		serverName string
		wantErr    bool
	}{
		{"localhost", pki.CAFile, "localhost", false},
		{"IP 127.0.0.1", pki.CAFile, "127.0.0.1", false},
		{"name not in the certificate", pki.CAFile, "broker.example", true},
		{"other CA", pki.ForeignCAFile, "localhost", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := provisioning.LoadClientTLS(tt.caFile, certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			cfg.ServerName = tt.serverName
			conn, err := tls.DialWithDialer(&net.Dialer{Timeout: testenv.WaitTimeout}, "tcp", mq.Addr(), cfg)
			if err == nil {
				conn.Close()
			}
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("handshake error = %v, want error %v", err, tt.wantErr)
			}
			if err != nil {
				var verr *tls.CertificateVerificationError
				if !errors.As(err, &verr) {
					t.Errorf("error %v is not a certificate verification error", err)
				}
			}
		})
	}
}

// TestMosquittoRestart checks the broker helper: retained messages survive a
// restart with persistence, and are gone after WipeData.
func TestMosquittoRestart(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Persistence: true})
	ctl := pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	ctl.Publish(t, "thermo/d1/cmd", 1, true, []byte("kept"))
	ctl.Close()

	mq.Restart()
	d1 := pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	if m, _ := d1.WaitFor(t, "thermo/d1/cmd"); string(m.Payload) != "kept" || !m.Retained {
		t.Errorf("after restart got %q retained=%v, want retained %q", m.Payload, m.Retained, "kept")
	}
	d1.Close()

	// A crash (SIGKILL) keeps what was saved: with persistence the broker
	// saves after every change.
	ctl = pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	ctl.Publish(t, "thermo/d1/cmd", 1, true, []byte("kept after crash"))
	ctl.Close()
	waitSaved(t, mq)
	mq.Kill()
	mq.Start()
	d1 = pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	if m, _ := d1.WaitFor(t, "thermo/d1/cmd"); string(m.Payload) != "kept after crash" {
		t.Errorf("after kill got %q, want %q", m.Payload, "kept after crash")
	}
	d1.Close()

	mq.Kill()
	mq.WipeData()
	mq.Start()
	d1 = pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	ctl = pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	ctl.Publish(t, "thermo/d1/cmd", 1, false, []byte("marker"))
	if _, before := d1.WaitPayload(t, "thermo/d1/cmd", "marker"); len(before) != 0 {
		t.Errorf("wiped broker still delivered %v", before)
	}
}

// waitSaved waits until the broker's persistence file mentions the last
// retained payload (mosquitto saves asynchronously, within a second).
func waitSaved(t *testing.T, mq *testenv.Mosquitto) {
	t.Helper()
	deadline := time.Now().Add(testenv.WaitTimeout)
	for {
		b, _ := os.ReadFile(filepath.Join(mq.DataDir, "mosquitto.db"))
		if bytes.Contains(b, []byte("kept after crash")) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("mosquitto did not save its persistence file")
		}
		time.Sleep(20 * time.Millisecond) // polling a file written by another process
	}
}

// TestMosquittoACLIsTheContract runs a real Mosquitto with the generated
// ACL: a device publishes only event, telemetry and status of its own id,
// a controller (controller, and a controller-NAME listed for it) only
// commands; everything else is acknowledged, dropped, and never retained.
func TestMosquittoACLIsTheContract(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Controllers: []string{"controller-b"}})
	bCert, bKey := pki.ClientWithCN(t, "controller-b")

	ctl := pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	ctl.Subscribe(t, "thermo/#", 1)
	ctlB := testenv.Connect(t, mq.URL(), testenv.ClientOptions{CAFile: pki.CAFile, CertFile: bCert, KeyFile: bKey})
	d1 := pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/#", 1) // granted by Mosquitto 2.0; deliveries are checked
	d2 := pki.Connect(t, mq.URL(), "d2")

	tests := []struct {
		who     string
		c       *testenv.Client
		topic   string
		retain  bool
		allowed bool
	}{
		{"d1", d1, "thermo/d1/event", true, true},
		{"d1", d1, "thermo/d1/telemetry", false, true},
		{"d1", d1, "thermo/d1/status", true, true},
		{"d1", d1, "thermo/d1/cmd", true, false},
		{"d1", d1, "thermo/d1/junk", true, false},
		{"d1", d1, "thermo/d1/junk/1", true, false},
		{"d1", d1, "thermo/d1/event/x", true, false},
		{"d1", d1, "thermo/d1", true, false},
		{"d1", d1, "thermo/d2/event", true, false},
		{"d1", d1, "thermo/d2/status", true, false},
		{"d1", d1, "thermo/status", true, false},
		{"controller", ctl, "thermo/d1/cmd", true, true},
		{"controller", ctl, "thermo/d1/event", true, true}, // retiring a device clears its retained messages
		{"controller", ctl, "thermo/d1/junk", true, false},
		{"controller", ctl, "thermo/controller/event", true, false},
		{"controller", ctl, "thermo/controller/status", true, false},
		{"controller-b", ctlB, "thermo/d2/cmd", true, true},
		{"controller-b", ctlB, "thermo/controller-b/event", true, false},
		{"controller-b", ctlB, "thermo/d2/status", true, true},
		// Certificate renewal: requests up, answers down, never retained.
		{"d1", d1, "thermo/d1/csr", false, true},
		{"d1", d1, "thermo/d2/csr", false, false},
		{"d1", d1, "thermo/d1/cert", false, false},
		{"controller", ctl, "thermo/d1/cert", false, true},
	}
	// Each publisher's marker, on a topic it may publish, is handled after
	// its publish on the same connection: once the controller has the
	// marker, it would have had the publish too.
	markerTopic := map[*testenv.Client]string{d1: "thermo/d1/event", ctl: "thermo/d1/cmd", ctlB: "thermo/d2/cmd"}
	for i, tc := range tests {
		t.Run(fmt.Sprintf("%s %s retain %v", tc.who, tc.topic, tc.retain), func(t *testing.T) {
			payload := fmt.Sprintf("%s %d", tc.who, i)
			if err := tc.c.PublishErr(tc.topic, 1, tc.retain, []byte(payload)); err != nil {
				t.Fatalf("publish: %v (Mosquitto acknowledges a forbidden publish)", err)
			}
			tc.c.Publish(t, markerTopic[tc.c], 1, false, []byte("marker "+payload))
			_, before := ctl.WaitPayload(t, markerTopic[tc.c], "marker "+payload)
			delivered := false
			for _, m := range before {
				delivered = delivered || string(m.Payload) == payload
			}
			if delivered != tc.allowed {
				t.Errorf("delivered = %v, want %v", delivered, tc.allowed)
			}
		})
	}
	for _, m := range d2.Messages() {
		t.Errorf("d2 received %q on %s", m.Payload, m.Topic)
	}
	for _, m := range d1.Messages() {
		if m.Topic != "thermo/d1/cmd" && m.Topic != "thermo/d1/event" && m.Topic != "thermo/d1/cert" {
			t.Errorf("d1 read %q on %s", m.Payload, m.Topic)
		}
	}

	// Retained: only what was allowed. Mosquitto sends the retained
	// messages of a subscription before it handles the subscriber's next
	// packet, so they all come before the subscriber's own marker.
	late := pki.Connect(t, mq.URL(), provisioning.ControllerCN)
	late.Subscribe(t, "thermo/#", 1)
	late.Publish(t, "thermo/d1/cmd", 1, false, []byte("late marker"))
	_, before := late.WaitPayload(t, "thermo/d1/cmd", "late marker")
	retained := map[string]string{}
	for _, m := range before {
		if m.Retained {
			retained[m.Topic] = string(m.Payload)
		}
	}
	want := map[string]string{
		"thermo/d1/event": "controller 12", "thermo/d1/status": "d1 2", "thermo/d1/cmd": "controller 11",
		"thermo/d2/cmd": "controller-b 16", "thermo/d2/status": "controller-b 18",
	}
	if fmt.Sprint(retained) != fmt.Sprint(want) {
		t.Errorf("retained %v, want %v", retained, want)
	}
}

// TestMosquittoRefusesOversizePackets: max_packet_size closes a connection
// whose packet announces more than protocol.MaxPacketSize as soon as the
// fixed header is read, before CONNECT or after it, without Mosquitto
// reserving the announced size; an oversize retained message is not kept.
func TestMosquittoRefusesOversizePackets(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, "d1")
	d1 := pki.Connect(t, mq.URL(), "d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("marker"))
	d1.Close()

	big := bytes.Repeat([]byte("x"), 100_000)
	tests := []struct {
		name    string
		connect bool
		send    []byte
	}{
		{"5-byte header before CONNECT", false, testenv.OversizeHeader},
		{"PUBLISH header announcing 256 MiB", true, testenv.Header(0x31, 268_435_455)},
		{"retained PUBLISH of 100 KB", true, testenv.PublishPacket("thermo/d1/event", big, 1, true)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := pki.DialRawTLS(t, mq.Addr(), cert, key)
			if tc.connect {
				testenv.RawConnect(t, c, "d1")
			}
			before, _, err := testenv.ProcessMemory(mq.Pid())
			if err != nil {
				t.Fatal(err)
			}
			closed, after := true, time.Duration(0)
			if err := testenv.RawWriteErr(c, tc.send); err != nil {
				t.Logf("closed while the packet was sent: %v", err)
			} else {
				closed, after = testenv.WaitClosed(c, testenv.WaitTimeout)
			}
			// Measured before the test closes its side: a broker waiting
			// for the announced packet holds its buffer now.
			vm, _, err := testenv.ProcessMemory(mq.Pid())
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("closed %v after %v; Mosquitto's virtual size %d KiB -> %d KiB", closed, after, before>>10, vm>>10)
			if !closed {
				t.Errorf("connection still open %v after the oversize packet", after)
			}
			if vm > before+32<<20 {
				t.Errorf("Mosquitto's virtual size grew by %d MiB", (vm-before)>>20)
			}
		})
	}
	d1 = pki.Connect(t, mq.URL(), "d1")
	d1.Subscribe(t, "thermo/d1/event", 1)
	if m, _ := d1.WaitFor(t, "thermo/d1/event"); string(m.Payload) != "marker" {
		t.Errorf("retained event of %d bytes, want the marker", len(m.Payload))
	}
}
