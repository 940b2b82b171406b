package e2e

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// alerted reports whether alerts hold code.
func alerted(alerts []protocol.Alert, code string) bool {
	_, ok := hasAlert(alerts, code)
	return ok
}

// hasAlert reports whether alerts holds code, and its detail.
func hasAlert(alerts []protocol.Alert, code string) (string, bool) {
	i := slices.IndexFunc(alerts, func(a protocol.Alert) bool { return a.Code == code })
	if i < 0 {
		return "", false
	}
	return alerts[i].Detail, true
}

// logLines counts the lines of a process's log that match re.
func logLines(p *process, re string) int {
	return len(regexp.MustCompile(re).FindAllStringIndex(p.logText(), -1))
}

// connects is how many MQTT connections a thermostat has made so far.
func connects(d *binThermostat) int { return logLines(d.process, `(?m)level=INFO msg=connected `) }

// TestClonedCard is issue 9's defect 6 with the real binaries: two boards
// made from one card, the same certificate and device id, different state.
// They used to take the session from each other 54 times in 8 s, their
// clocks racing, with nothing naming the cause. Now both back off, the
// thermostat says why (`thermostat status` shows duplicate_identity), and
// so does the controller: with its embedded broker it sees the takeovers
// itself, raises the alert with its own detail and logs it at ERROR once;
// with Mosquitto, which the controller cannot watch, the alert reaches the
// API through the devices' telemetry.
func TestClonedCard(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries, watches them for seconds")
	}
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		ctl := startBinController(t, w, t.TempDir())
		boards := []*binThermostat{newBinThermostat(t, w, "d1").start(), newBinThermostat(t, w, "d1").start()}

		eventually(t, "a board to report duplicate_identity", func() (bool, string) {
			var seen []string
			for _, b := range boards {
				b.alive()
				st, err := b.status()
				if err != nil {
					return false, err.Error()
				}
				if _, ok := hasAlert(st.Alerts, protocol.AlertDuplicateIdentity); ok {
					return true, ""
				}
				seen = append(seen, fmt.Sprintf("%+v", st.Alerts))
			}
			return false, strings.Join(seen, "; ")
		})
		for _, b := range boards {
			if !strings.Contains(b.logText(), "never clone a provisioned card") {
				continue
			}
			if n := logLines(b.process, `level=ERROR msg="alert raised: session taken over repeatedly"`); n != 1 {
				t.Errorf("%s: %d ERROR lines for the alert, want 1", b.name, n)
			}
		}

		eventually(t, "the API to show duplicate_identity", func() (bool, string) {
			c, err := w.ctl("d1")
			if err != nil {
				return false, err.Error()
			}
			detail, ok := hasAlert(c.Alerts, protocol.AlertDuplicateIdentity)
			if kind == embedded {
				// The controller's own finding, not only the devices' report.
				ok = ok && strings.Contains(detail, "took its session from each other")
			}
			return ok, fmt.Sprintf("%+v", c.Alerts)
		})

		// Both boards back off: over 8 s they connect a few times, where
		// they connected 54 times.
		before := connects(boards[0]) + connects(boards[1])
		time.Sleep(8 * time.Second) // measuring a rate over a fixed window
		n := connects(boards[0]) + connects(boards[1]) - before
		t.Logf("%d connections in 8 s", n)
		if n > 8 {
			t.Errorf("%d connections in 8 s, want a few (there were 54)", n)
		}
		for _, b := range boards {
			b.alive()
		}

		if kind == embedded {
			// Logged at ERROR once for the whole episode, however many
			// takeovers it has had since.
			if n := logLines(ctl.process, `level=ERROR .*duplicate_identity`); n != 1 {
				t.Errorf("controller: %d ERROR lines about duplicate_identity, want 1:\n%s", n, ctl.logText())
			}
		}
	})
}

// TestBrokerRestartsAreNoTakeover: the takeover rule must never mistake a
// broker that restarts for a cloned card, and must not slow the recovery:
// three restarts in a row, each connection short, and the thermostat is
// back at once each time with no duplicate_identity anywhere.
func TestBrokerRestartsAreNoTakeover(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		dataDir := t.TempDir()
		ctl := startBinController(t, w, dataDir)
		d1 := newBinThermostat(t, w, "d1").start()
		d1.synced()
		for i := range 3 {
			before := connects(d1)
			switch kind {
			case embedded:
				ctl.kill9()
				ctl = startBinController(t, w, dataDir)
			case mosquitto:
				w.mq.Kill()
				w.mq.Start()
			}
			up := time.Now()
			eventually(t, fmt.Sprintf("d1 to connect again after restart %d", i+1), func() (bool, string) {
				return connects(d1) > before, fmt.Sprintf("%d connections", connects(d1))
			})
			if took := time.Since(up); took > 5*time.Second {
				t.Errorf("restart %d: d1 back %v after the broker", i+1, took.Round(time.Millisecond))
			}
		}
		st, c := d1.synced()
		if _, ok := hasAlert(st.Alerts, protocol.AlertDuplicateIdentity); ok {
			t.Errorf("thermostat status shows duplicate_identity after broker restarts: %+v", st.Alerts)
		}
		if _, ok := hasAlert(c.Alerts, protocol.AlertDuplicateIdentity); ok {
			t.Errorf("the API shows duplicate_identity after broker restarts: %+v", c.Alerts)
		}
		if strings.Contains(d1.logText(), "taken over") {
			t.Errorf("the thermostat took a broker restart for a takeover:\n%s", d1.logText())
		}
	})
}

// TestExpiredCertificateLogged is issue 9's defect 8 with the real
// binaries: a thermostat of the fleet restarts with a certificate that has
// expired, and retries twice a second or so. Its log has one WARN about the
// refusal for all those attempts (with the count), not one per attempt and
// not one ever; its status shows tls_refused. With the embedded broker,
// the controller's log likewise has one WARN for that peer, and the API
// shows tls_refused on the device, which the controller saw itself.
func TestExpiredCertificateLogged(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		ctl := startBinController(t, w, t.TempDir())
		d1 := newBinThermostat(t, w, "d1").start()
		d1.synced()
		d1.stop()
		cert, key := w.pki.ExpiredClient(t, "d1")
		d1.args = append(d1.args, "--cert", cert, "--key", key)
		d1.start()

		attempts := func() int { return logLines(d1.process, `msg="connect failed"`) }
		eventually(t, "ten refused attempts", func() (bool, string) {
			d1.alive()
			return attempts() >= 10, fmt.Sprintf("%d attempts", attempts())
		})
		warns := regexp.MustCompile(`(?m)^.*level=WARN msg="connect failed".*$`).FindAllString(d1.logText(), -1)
		if len(warns) != 1 || !strings.Contains(warns[0], "attempts=1") || !strings.Contains(warns[0], "expired certificate") {
			t.Errorf("thermostat: %d WARN lines for %d refused attempts, want 1 naming the refusal, with its count: %q", len(warns), attempts(), warns)
		}
		eventually(t, "thermostat status to show tls_refused", func() (bool, string) {
			st, err := d1.status()
			if err != nil {
				return false, err.Error()
			}
			_, ok := hasAlert(st.Alerts, protocol.AlertTLSRefused)
			return ok, fmt.Sprintf("%+v", st.Alerts)
		})
		if kind != embedded {
			return
		}
		if n := logLines(ctl.process, `level=WARN msg="connection refused: TLS handshake failed".*cn=d1`); n != 1 {
			t.Errorf("controller: %d WARN lines for %d refused handshakes of d1, want 1", n, logLines(ctl.process, `TLS handshake failed`))
		}
		eventually(t, "the API to show tls_refused on d1", func() (bool, string) {
			c, err := w.ctl("d1")
			if err != nil {
				return false, err.Error()
			}
			detail, ok := hasAlert(c.Alerts, protocol.AlertTLSRefused)
			return ok && strings.Contains(detail, "controllerlite pki device d1"), fmt.Sprintf("%+v", c.Alerts)
		})
		if n := logLines(ctl.process, `level=ERROR .*tls_refused`); n != 1 {
			t.Errorf("controller: %d ERROR lines about tls_refused, want 1", n)
		}
	})
}
