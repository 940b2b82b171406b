package broker

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// alertLog records what a Broker reports through OnAlert.
type alertLog struct {
	mu     sync.Mutex
	events []string // "d1 duplicate_identity raised", ...
	detail map[string]string
}

func newAlertLog() *alertLog { return &alertLog{detail: map[string]string{}} }

func (a *alertLog) on(id, code string, raised bool, detail string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	what := "cleared"
	if raised {
		what = "raised"
		a.detail[id+" "+code] = detail
	}
	a.events = append(a.events, id+" "+code+" "+what)
}

func (a *alertLog) list() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.events...)
}

func (a *alertLog) count(event string) int {
	n := 0
	for _, e := range a.list() {
		if e == event {
			n++
		}
	}
	return n
}

// TestTakeoverWatch plays takeovers of one id through the rule, on a
// made-up clock: when the episode starts (once), what keeps it open, and
// when quiet ends it.
func TestTakeoverWatch(t *testing.T) {
	const s = time.Second
	// A step is a takeover (or, with quiet, the episode's timer firing)
	// after some time; want is the alert event it causes, "" for none.
	type step struct {
		after time.Duration
		quiet bool
		want  string
	}
	cases := []struct {
		name  string
		id    string
		steps []step
	}{
		{"two boards fighting: raised once, at the third takeover", "d1", []step{
			{0, false, ""}, {s, false, ""}, {s, false, "d1 duplicate_identity raised"},
			{s, false, ""}, {s, false, ""},
		}},
		{"takeovers spread over more than the window: an honest device", "d1", []step{
			{0, false, ""}, {40 * s, false, ""}, {40 * s, false, ""}, {40 * s, false, ""},
		}},
		{"boards backed off to minutes keep the episode open; quiet ends it", "d1", []step{
			{0, false, ""}, {s, false, ""}, {s, false, "d1 duplicate_identity raised"},
			{5 * time.Minute, false, ""},
			{5 * time.Minute, true, ""}, // five minutes quiet: not yet
			{5 * time.Minute, true, "d1 duplicate_identity cleared"},
			{time.Minute, false, ""}, // a new takeover starts counting afresh
		}},
		{"the controller's certificate: logged, no device alert", protocol.ControllerID, []step{
			{0, false, ""}, {s, false, ""}, {s, false, ""},
			{TakeoverQuiet, true, ""},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := newLogRecorder()
			alerts := newAlertLog()
			a := newAlerter(slog.New(rec))
			fn := AlertFunc(alerts.on)
			a.fn.Store(&fn)
			w := newTakeoverWatch(slog.New(rec), a)
			defer w.stop()
			now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
			for i, st := range tc.steps {
				now = now.Add(st.after)
				before := len(alerts.list())
				if st.quiet {
					w.quiet(tc.id, now)
				} else {
					w.taken(tc.id, fmt.Sprintf("10.0.0.%d:4000", i%2+1), fmt.Sprintf("10.0.0.%d:4001", (i+1)%2+1), now)
				}
				got := ""
				if l := alerts.list(); len(l) > before {
					got = strings.Join(l[before:], "; ")
				}
				if got != st.want {
					t.Fatalf("step %d: alert %q, want %q (all: %v)", i, got, st.want, alerts.list())
				}
			}
			if d := alerts.detail[tc.id+" duplicate_identity"]; d != "" && (!strings.Contains(d, "10.0.0.1, 10.0.0.2") || !strings.Contains(d, "never clone")) {
				t.Errorf("detail %q lacks the remotes or the cure", d)
			}
			if tc.id == protocol.ControllerID && !rec.has("ERROR one certificate used by several connections", "client=controller") {
				t.Errorf("the controller's duplicate certificate not logged:\n%s", strings.Join(rec.all(), "\n"))
			}
		})
	}
}

// TestTakeoversRaiseAlert: four connections with one device certificate,
// each taking the session of the one before, raise duplicate_identity on
// the device once; without a receiver of alerts the broker logs it at
// ERROR once itself.
func TestTakeoversRaiseAlert(t *testing.T) {
	for _, withReceiver := range []bool{true, false} {
		t.Run(fmt.Sprintf("receiver=%v", withReceiver), func(t *testing.T) {
			pki := testenv.NewPKI(t)
			alerts := newAlertLog()
			tb := startBroker(t, pki, "", func(b *Broker) {
				if withReceiver {
					b.OnAlert(alerts.on)
				}
			})
			cert, key := pki.Client(t, "d1")
			// Connect returns once the session is established, the
			// previous one's taken over.
			for range TakeoverCount + 2 {
				c := testenv.Connect(t, tb.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: cert, KeyFile: key})
				defer c.Close()
			}
			errors := 0
			for _, l := range tb.log.all() {
				if strings.HasPrefix(l, "ERROR") {
					errors++
				}
			}
			if withReceiver {
				if n := alerts.count("d1 duplicate_identity raised"); n != 1 {
					t.Errorf("raised %d times, want once: %v", n, alerts.list())
				}
				if errors != 0 {
					t.Errorf("%d ERROR lines: logging the raise is the receiver's", errors)
				}
				return
			}
			if errors != 1 || !tb.log.has("ERROR one certificate used by several connections", "client=d1", "never clone") {
				t.Errorf("%d ERROR lines, want one naming the cure:\n%s", errors, strings.Join(tb.log.all(), "\n"))
			}
		})
	}
}

// TestTLSRefusalsRateLimited: a device with an expired certificate retries
// again and again; the broker logs one WARN for its CN (with the count),
// raises tls_refused on it once, and clears it when the device connects
// with a good certificate. A client of another CA (whose certificate Go's
// client does not even send, the broker naming no CA of its) is logged
// once by its host, and alarms no device.
func TestTLSRefusalsRateLimited(t *testing.T) {
	pki := testenv.NewPKI(t)
	alerts := newAlertLog()
	tb := startBroker(t, pki, "", func(b *Broker) { b.OnAlert(alerts.on) })
	expiredCert, expiredKey := pki.ExpiredClient(t, "d1")
	foreignCert, foreignKey := pki.ForeignClient(t, "d2")
	for range 10 {
		for _, ck := range [][2]string{{expiredCert, expiredKey}, {foreignCert, foreignKey}} {
			if c, err := testenv.Dial(tb.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: ck[0], KeyFile: ck[1]}); err == nil {
				c.Close()
				t.Fatal("the broker accepted a refused certificate")
			}
		}
	}
	// Each refused Dial is logged by the broker a moment after the client
	// gave up: wait for all 20.
	deadline := time.Now().Add(waitTimeout)
	for refusedHandshakes(tb.log) < 20 {
		if time.Now().After(deadline) {
			t.Fatalf("%d refused handshakes logged, want 20:\n%s", refusedHandshakes(tb.log), strings.Join(tb.log.all(), "\n"))
		}
		time.Sleep(10 * time.Millisecond) // polling the log, bounded by the deadline
	}
	for _, peer := range []string{"cn=d1", "cn= "} {
		n := 0
		for _, l := range tb.log.all() {
			if strings.HasPrefix(l, "WARN connection refused: TLS handshake failed") && strings.Contains(l, peer) {
				n++
				if !strings.Contains(l, "attempts=1") {
					t.Errorf("first WARN without its count: %s", l)
				}
			}
		}
		if n != 1 {
			t.Errorf("%q: %d WARN lines for 10 refused handshakes, want 1", peer, n)
		}
	}
	// The alert is raised beside the log line, a moment after it.
	testenv.Eventually(t, waitTimeout, "d1's tls_refused raised", func() (bool, string) {
		got := alerts.list()
		return len(got) > 0, fmt.Sprint(got)
	})
	if got := alerts.list(); len(got) != 1 || got[0] != "d1 tls_refused raised" {
		t.Fatalf("alerts %v, want d1's tls_refused raised once", got)
	}
	if d := alerts.detail["d1 tls_refused"]; !strings.Contains(d, "controllerlite pki device d1") {
		t.Errorf("detail %q does not say what to do", d)
	}

	goodCert, goodKey := pki.Client(t, "d1")
	c := testenv.Connect(t, tb.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: goodCert, KeyFile: goodKey})
	defer c.Close()
	tb.log.waitFor(t, "client connected", "client=d1")
	testenv.Eventually(t, waitTimeout, "tls_refused cleared on a good connection", func() (bool, string) {
		return alerts.count("d1 tls_refused cleared") >= 1, fmt.Sprint(alerts.list())
	})
}

// refusedHandshakes counts the failed handshakes logged, at any level.
func refusedHandshakes(r *logRecorder) int {
	n := 0
	for _, l := range r.all() {
		if strings.Contains(l, "connection refused: TLS handshake failed") {
			n++
		}
	}
	return n
}

// TestOwnButRefused: only a device certificate of our own CA, refused for
// its dates, is that device's alert; a certificate of another CA claiming
// the device's id alarms nobody.
func TestOwnButRefused(t *testing.T) {
	pki := testenv.NewPKI(t)
	expired := &provisioning.IssueOptions{NotBefore: time.Now().Add(-48 * time.Hour), Validity: 47 * time.Hour}
	parse := func(certPEM []byte, err error) *x509.Certificate {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		b, _ := pem.Decode(certPEM)
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	issue := func(ca *provisioning.CA, cn string) *x509.Certificate {
		certPEM, _, err := ca.IssueClient(cn, expired)
		return parse(certPEM, err)
	}
	own, foreign := issue(pki.CA, "d1"), issue(pki.Foreign, "d1")
	ctrl := issue(pki.CA, protocol.ControllerID)
	expiredErr := x509.CertificateInvalidError{Reason: x509.Expired, Detail: "current time is after"}
	roots, err := readCerts(pki.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	r := newRefusalLog(slog.New(newLogRecorder()), roots, newAlerter(slog.New(newLogRecorder())))
	for _, tc := range []struct {
		name string
		cert *x509.Certificate
		err  error
		want bool
	}{
		{"own CA, expired", own, expiredErr, true},
		{"another CA, expired", foreign, expiredErr, false},
		{"own CA, refused for another reason", own, x509.UnknownAuthorityError{}, false},
		{"own CA, expired, not a device", ctrl, expiredErr, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, why, ok := r.ownButRefused(&tls.CertificateVerificationError{UnverifiedCertificates: []*x509.Certificate{tc.cert}, Err: tc.err})
			if ok != tc.want || (ok && (id != "d1" || !strings.Contains(why, "controllerlite pki device d1"))) {
				t.Fatalf("ownButRefused = %q, %q, %v; want ok %v", id, why, ok, tc.want)
			}
		})
	}
}
