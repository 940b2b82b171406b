package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// unknownToController asserts the controller has never heard of id.
func unknownToController(t *testing.T, w *world, id string) {
	t.Helper()
	_, err := w.ctl(id)
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusNotFound {
		t.Errorf("the controller knows %s (GET: %v), want 404", id, err)
	}
}

// TestClientsRefused: the broker refuses a client with no certificate, with
// a certificate from another CA, or with an expired one; and a device with
// a valid certificate can neither write nor read another device's topics:
// its forged Command and Event reach neither the device nor the controller,
// are not retained, and change nothing.
func TestClientsRefused(t *testing.T) {
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newWorld(t, kind)
		d1 := w.newThermostat("d1", thermostatOptions{})
		d1.start()
		d1.waitSynced()

		for _, tc := range []struct {
			name string
			opts func() testenv.ClientOptions
		}{
			{"no certificate", func() testenv.ClientOptions {
				return testenv.ClientOptions{CAFile: w.pki.CAFile, ClientID: "d9"}
			}},
			{"certificate from another CA", func() testenv.ClientOptions {
				cert, key := w.pki.ForeignClient(t, "d9")
				return testenv.ClientOptions{CAFile: w.pki.CAFile, CertFile: cert, KeyFile: key}
			}},
			{"expired certificate", func() testenv.ClientOptions {
				cert, key := w.pki.ExpiredClient(t, "d9")
				return testenv.ClientOptions{CAFile: w.pki.CAFile, CertFile: cert, KeyFile: key}
			}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				c, err := testenv.Dial(w.brokerURL(), tc.opts())
				if err == nil {
					c.Close()
					t.Fatal("the broker accepted the connection")
				}
				t.Logf("refused: %v", err)
			})
		}
		unknownToController(t, w, "d9")

		t.Run("device on another device's topics", func(t *testing.T) {
			st, ctl := d1.waitSynced()
			d2 := w.pki.Connect(t, w.brokerURL(), "d2")

			// Reading: refused at subscribe, or granted and never delivered
			// (checked below, after d1 has published).
			readRefused := d2.SubscribeErr("thermo/d1/#", 1) != nil

			// Writing: clocks far ahead, so that had either landed, the
			// legitimate command below would be a duplicate at d1.
			forged := `{"v":1,"vc":[100,100],"props":{"setpoint_c":{"val":30,"w":[100,100]},"mode":{"val":"cool","w":[100,100]}},"src":"controller"}`
			for _, topic := range []string{"thermo/d1/cmd", "thermo/d1/event", "thermo/d1/status"} {
				payload := forged
				if strings.HasSuffix(topic, "/status") {
					payload = `{"v":1,"online":false}`
				}
				// Both brokers acknowledge a forbidden publish and drop it;
				// an error here (a closed connection) is a refusal too.
				if err := d2.PublishErr(topic, 1, true, []byte(payload)); err != nil {
					t.Logf("publish on %s: %v", topic, err)
					d2 = w.pki.Connect(t, w.brokerURL(), "d2")
				}
			}
			// A barrier: d2's own Event comes after the forged messages on
			// d2's connection; once the controller has it, anything forged
			// would have been delivered before it.
			const d2Event = `{"v":1,"vc":[0,1],"props":{"mode":{"val":"off","w":[0,1]}},"src":"local"}`
			d2.Publish(t, "thermo/d2/event", 1, false, []byte(d2Event))
			eventually(t, "the controller to hear from d2", func() (bool, string) {
				c, err := w.ctl("d2")
				return err == nil && c.VC == protocol.Clock{1, 1}, fmt.Sprintf("%+v %v", c, err)
			})
			if c := w.mustCtl("d1"); c.VC != ctl.VC || !sameProps(c.Props, ctl.Props) || !c.Online {
				t.Fatalf("the controller's d1 changed: %v %v online=%v, was %v %v", c.VC, c.Props, c.Online, ctl.VC, ctl.Props)
			}

			// A legitimate command: d1 applies it, so the forged Command
			// (whose clock would make this one a duplicate) never reached it.
			c := w.set("d1", map[string]any{protocol.PropSetpoint: 19.0})
			eventually(t, "d1 to apply the controller's command", func() (bool, string) {
				sp, w := setpoint(d1.status().Props)
				return sp == 19 && w == c.VC, fmt.Sprintf("%v@%v", sp, w)
			})
			after, _ := d1.waitSynced()
			if after.VC[ctlSide] >= 100 || after.VC[devSide] >= 100 {
				t.Errorf("d1's clock %v merged a forged message", after.VC)
			}
			if n := after.Counters.Received - st.Counters.Received; n != 1 || after.Counters.Rejected != st.Counters.Rejected {
				t.Errorf("d1 received %d messages (rejected %d) since the forgery, want only the controller's command",
					n, after.Counters.Rejected-st.Counters.Rejected)
			}

			// d1's Event about the command went through the broker; a round
			// trip on d2's own event topic (a duplicate of its Event above,
			// which changes nothing) comes after it, so if d2's
			// subscription to d1's topics had been granted, d1's Event
			// would be in d2's messages by then.
			d2.Subscribe(t, "thermo/d2/event", 1)
			d2.Publish(t, "thermo/d2/event", 1, false, []byte(d2Event))
			d2.WaitPayload(t, "thermo/d2/event", d2Event)
			for _, m := range d2.Messages() {
				if strings.HasPrefix(m.Topic, "thermo/d1/") {
					t.Errorf("d2 read d1's %s: %s", m.Topic, m.Payload)
				}
			}
			t.Logf("d2's subscription to thermo/d1/# refused at SUBACK: %v", readRefused)

			// Nothing forged was retained: a restarted d1 and a restarted
			// controller read the broker's retained messages again.
			d1.stop()
			w.stopController()
			w.startController()
			d1.start()
			st, ctl = d1.waitSynced()
			if st.VC[ctlSide] >= 100 || st.VC[devSide] >= 100 || ctl.VC[ctlSide] >= 100 || ctl.VC[devSide] >= 100 {
				t.Errorf("after restarts: d1 %v, controller %v: a forged message was retained", st.VC, ctl.VC)
			}
			if sp, _ := setpoint(ctl.Props); sp != 19 {
				t.Errorf("after restarts the controller has setpoint %v, want 19", sp)
			}
		})
	})
}

// TestServerCertificateVerified: a thermostat and controllerlite --broker
// both verify the broker's certificate against the fleet CA and the host
// name they dial, and keep refusing a broker that fails either check.
func TestServerCertificateVerified(t *testing.T) {
	for _, tc := range []struct {
		name   string
		issue  func(w *world) ([]byte, []byte, error)
		reason string
	}{
		{"certificate from another CA", func(w *world) ([]byte, []byte, error) {
			return w.pki.Foreign.IssueServer(testenv.ServerHosts, nil)
		}, "certificate signed by unknown authority"},
		{"certificate for another host", func(w *world) ([]byte, []byte, error) {
			return w.pki.CA.IssueServer([]string{"broker.example"}, nil)
		}, "certificate is valid for broker.example, not localhost"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachBroker(t, func(t *testing.T, kind brokerKind) {
				w := newBareWorld(t, kind, func(w *world) {
					certPEM, keyPEM, err := tc.issue(w)
					if err != nil {
						t.Fatal(err)
					}
					dir := t.TempDir()
					w.serverCert, w.serverKey = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
					if err := provisioning.WriteCertKey(w.serverCert, w.serverKey, certPEM, keyPEM); err != nil {
						t.Fatal(err)
					}
				})
				// controllerlite: with the embedded broker it serves the bad
				// certificate; with Mosquitto it dials it with --broker.
				srv, err := server.Start(context.Background(), w.controllerConfig())
				if err != nil {
					t.Fatal(err)
				}
				defer srv.Close()

				d1 := w.newThermostat("d1", thermostatOptions{})
				d1.start()
				// The reason is logged where a user running at the default
				// level (info) sees it.
				mark := 0
				w.logs.wait(t, mark, "who=d1", "level=WARN", `msg="connect failed"`, tc.reason)
				eventually(t, "d1 to try again", func() (bool, string) {
					s := d1.th.Client().Stats()
					return s.Attempts >= 2, fmt.Sprintf("%+v", s)
				})
				if s := d1.th.Client().Stats(); s.Connects != 0 || d1.status().Connected {
					t.Errorf("d1 connected to a broker it should refuse: %+v", s)
				}
				if kind == mosquitto {
					w.logs.wait(t, mark, "who=controller", "level=WARN", `msg="connect failed"`, tc.reason)
					if st := srv.Fleet().Status(); st.Connected || st.Ready {
						t.Errorf("controllerlite --broker connected to a broker it should refuse: %+v", st)
					}
				}
			})
		})
	}
}
