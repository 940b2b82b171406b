package provisioning_test

import (
	"bytes"
	"crypto/tls"
	"errors"
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
	d1.Publish(t, "thermo/d1/cmd", 1, false, []byte("marker")) // a device may write its own cmd topic
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
