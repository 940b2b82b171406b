package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestTakeoverGuard plays connection histories through the takeover
// policy: when it must back off, and when it must leave the ordinary fast
// reconnect alone (broker restarts however quick, a hung broker, an
// outage between the losses).
func TestTakeoverGuard(t *testing.T) {
	const s = time.Second
	// One step: a loss ("lost", or "silent" when our keep-alive condemned
	// it), a failed attempt ("fail"), or a connection ("resumed" or
	// "fresh", the TLS handshake's kind). want is the wait a loss gets
	// from the policy (0: the ordinary backoff), or for a connection 1 if
	// it starts an episode.
	type step struct {
		after time.Duration // since the previous step
		what  string
		want  time.Duration
	}
	started := time.Duration(1)
	// Takeovers a second apart: connections resumed right after each loss.
	fight := func(n int) []step {
		var out []step
		for range n {
			out = append(out, step{s, "lost", 0}, step{0, "resumed", 0})
		}
		return out
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"a cloned board: the third takeover starts the episode, then the waits grow",
			append(append(fight(2), step{s, "lost", 0}, step{0, "resumed", started}),
				// With Rand 0 each wait is the lower bound of its range.
				step{s, "lost", 2500 * time.Millisecond}, step{0, "resumed", 0},
				step{time.Minute, "lost", 5 * s}, step{0, "resumed", 0},
				step{s, "silent", 0}, step{0, "resumed", 0}, // keep-alive: ordinary
				step{s, "lost", 10 * s})},
		{"one broker restart", []step{
			{s, "lost", 0}, {0, "fail", 0}, {0, "fresh", 0},
		}},
		{"a broker restarting faster than the backoff, three times: no resumption", []step{
			{s, "lost", 0}, {0, "fresh", 0},
			{s, "lost", 0}, {0, "fresh", 0},
			{s, "lost", 0}, {0, "fresh", 0},
			{s, "lost", 0}, {0, "fresh", 0},
		}},
		{"a failed attempt between takeovers: an outage, the count starts again",
			append(append(fight(2), step{s, "lost", 0}, step{0, "fail", 0}, step{0, "resumed", 0}),
				step{s, "lost", 0}, step{0, "resumed", 0},
				step{s, "lost", 0}, step{0, "resumed", 0},
				step{s, "lost", 0}, step{0, "resumed", started})},
		{"a hung broker, again and again: our keep-alive, not a takeover", []step{
			{s, "silent", 0}, {0, "resumed", 0},
			{s, "silent", 0}, {0, "resumed", 0},
			{s, "silent", 0}, {0, "resumed", 0},
		}},
		{"takeovers spread over more than the window", []step{
			{s, "lost", 0}, {0, "resumed", 0},
			{40 * s, "lost", 0}, {0, "resumed", 0},
			{40 * s, "lost", 0}, {0, "resumed", 0},
			{40 * s, "lost", 0}, {0, "resumed", 0},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g := takeoverGuard{backoff: Backoff{Min: TakeoverBackoff.Min, Max: TakeoverBackoff.Max, Rand: func() float64 { return 0 }}}
			at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
			for i, st := range tc.steps {
				at = at.Add(st.after)
				var got time.Duration
				switch st.what {
				case "lost", "silent":
					wait, ok := g.lost(at, st.what == "silent")
					if ok != (wait > 0) {
						t.Fatalf("step %d: lost = %v, ok %v", i, wait, ok)
					}
					got = wait
				case "fail":
					g.failed()
				case "resumed", "fresh":
					if g.connected(st.what == "resumed") {
						got = started
					}
				}
				if got != st.want {
					t.Fatalf("step %d (%s): got %v, want %v", i, st.what, got, st.want)
				}
			}
		})
	}
}

// TestTakeoverGuardEnd: a stable connection ends the episode; the next
// episode needs TakeoverCount takeovers again and starts from the shortest
// wait.
func TestTakeoverGuardEnd(t *testing.T) {
	g := takeoverGuard{backoff: Backoff{Min: 4 * time.Second, Max: time.Minute, Rand: func() float64 { return 0 }}}
	at := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	// takeover is a loss a second later and a resumed connection; it
	// reports the loss's takeover wait and whether the connection began
	// an episode.
	takeover := func() (time.Duration, bool) {
		at = at.Add(time.Second)
		w, _ := g.lost(at, false)
		return w, g.connected(true)
	}
	for range TakeoverCount {
		takeover()
	}
	if !g.active() {
		t.Fatal("no episode after repeated takeovers")
	}
	if w, _ := takeover(); w != 2*time.Second {
		t.Fatalf("first wait of the episode %v, want 2s", w)
	}
	g.end()
	if g.active() {
		t.Fatal("episode still active after end")
	}
	for i := range TakeoverCount - 1 {
		if w, started := takeover(); w != 0 || started {
			t.Fatalf("takeover %d after the episode ended: wait %v, started %v", i+1, w, started)
		}
	}
	if w, started := takeover(); w != 0 || !started {
		t.Fatalf("third takeover after the end: wait %v, started %v; want a new episode", w, started)
	}
	if w, _ := takeover(); w != 2*time.Second {
		t.Fatalf("first wait of the new episode %v, want the shortest, 2s", w)
	}
}

func TestKeepAliveFailed(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{errSilent, true},
		{fmt.Errorf("wrapped: %w", errSilent), true},
		{errors.New("pingresp not received, disconnecting"), true},
		{io.EOF, false},
		{&net.OpError{Op: "read", Err: errors.New("connection reset by peer")}, false},
		{nil, false},
	} {
		if got := keepAliveFailed(tc.err); got != tc.want {
			t.Errorf("keepAliveFailed(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

// TestTLSRefusal classifies real connect errors: refusals each way are
// TLS refusals, a broker that is down is not.
func TestTLSRefusal(t *testing.T) {
	pki := testenv.NewPKI(t)
	url := testenv.StartMosquitto(t, pki, nil).URL()
	expiredCert, expiredKey := pki.ExpiredClient(t, "d1")
	foreignCert, foreignKey := pki.ForeignClient(t, "d1")
	goodCert, goodKey := pki.Client(t, "d1")
	other := testenv.NewPKI(t)
	for _, tc := range []struct {
		name          string
		ca, cert, key string
		broker        string
		refused       bool
		who           string
	}{
		{"expired client certificate", pki.CAFile, expiredCert, expiredKey, url, true, "the broker refused"},
		{"client certificate from another CA", pki.CAFile, foreignCert, foreignKey, url, true, "the broker refused"},
		{"broker certificate from another CA", other.CAFile, goodCert, goodKey, url, true, "this client refused"},
		{"broker down", pki.CAFile, goodCert, goodKey, "mqtts://localhost:" + fmt.Sprint(testenv.FreePort(t)), false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(Options{Broker: tc.broker, CAFile: tc.ca, CertFile: tc.cert, KeyFile: tc.key,
				Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = c.connect(ctx)
			if err == nil {
				t.Fatal("connected")
			}
			why, ok := tlsRefusal(err)
			if ok != tc.refused || !strings.Contains(why, tc.who) {
				t.Fatalf("tlsRefusal(%v) = %q, %v; want %v, %q", err, why, ok, tc.refused, tc.who)
			}
		})
	}
	// The types behind those, without a broker.
	for _, err := range []error{
		&tls.CertificateVerificationError{Err: x509.UnknownAuthorityError{}},
		fmt.Errorf("tls: %w", x509.HostnameError{}),
		fmt.Errorf("%w : %w", mqtt.ErrNotConnected, &net.OpError{Op: "remote error", Err: errors.New("tls: expired certificate")}),
	} {
		if _, ok := tlsRefusal(err); !ok {
			t.Errorf("tlsRefusal(%v): not a refusal", err)
		}
	}
}

// troubles records what a Client reports through OnTrouble.
type troubles struct {
	mu     sync.Mutex
	events []string // "takeover+", "tls-" ...
}

func (r *troubles) on(tr Trouble, active bool, _ string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	sign := "-"
	if active {
		sign = "+"
	}
	r.events = append(r.events, fmt.Sprintf("%d%s", tr, sign))
}

func (r *troubles) seen(tr Trouble, active bool) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	sign := "-"
	if active {
		sign = "+"
	}
	for _, e := range r.events {
		if e == fmt.Sprintf("%d%s", tr, sign) {
			return true
		}
	}
	return false
}

func (r *troubles) list() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.events...)
}

// waitFor polls cond (bounded by d): a client's history is only visible
// through its counters and callbacks.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition, bounded by the deadline
	}
}

// TestTakeoverBacksOff: two clients on one certificate, on both brokers.
// Each reports TroubleTakeover, and together they reconnect a few times in
// seconds instead of dozens of times a second.
func TestTakeoverBacksOff(t *testing.T) {
	if testing.Short() {
		t.Skip("watches two clients for seconds")
	}
	for _, bc := range brokers {
		t.Run(bc.name, func(t *testing.T) {
			pki := testenv.NewPKI(t)
			url := bc.url(t, pki)
			cert, key := pki.Client(t, "d1")
			var tr [2]troubles
			var cs [2]*Client
			for i := range cs {
				cs[i] = start(t, Options{Broker: url, CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
					OnTrouble: tr[i].on, Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
			}
			connects := func() int { return cs[0].Stats().Connects + cs[1].Stats().Connects }
			waitFor(t, "both clients to report the takeover", 30*time.Second, func() bool {
				return tr[0].seen(TroubleTakeover, true) && tr[1].seen(TroubleTakeover, true)
			})
			// The first waits are 2.5-5 s, the next 5-10 s: over 5 s the
			// two make a handful of connections (at full speed, ~50).
			before := connects()
			time.Sleep(5 * time.Second) // measuring a rate over a fixed window
			if n := connects() - before; n > 4 {
				t.Errorf("%d connections in 5 s after the takeover was detected, want at most 4", n)
			}
			for i := range tr {
				if tr[i].seen(TroubleTakeover, false) {
					t.Errorf("client %d: takeover ended while both still run: %v", i, tr[i].list())
				}
			}
		})
	}
}

// TestTLSRefusedTrouble: an expired certificate, refused on every attempt
// by either broker, raises TroubleTLSRefused after TLSRefusedAfter
// attempts, and the log has one WARN for them, with the count of attempts.
func TestTLSRefusedTrouble(t *testing.T) {
	for _, bc := range brokers {
		t.Run(bc.name, func(t *testing.T) {
			pki := testenv.NewPKI(t)
			url := bc.url(t, pki)
			cert, key := pki.ExpiredClient(t, "d1")
			var tr troubles
			var logs lockedBuffer
			c := start(t, Options{Broker: url, CAFile: pki.CAFile, CertFile: cert, KeyFile: key, OnTrouble: tr.on,
				Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond},
				Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			waitFor(t, "tls_refused", 10*time.Second, func() bool { return tr.seen(TroubleTLSRefused, true) })
			waitFor(t, "ten attempts", 10*time.Second, func() bool { return c.Stats().Attempts >= 10 })
			if n := strings.Count(logs.String(), `msg="connect failed"`); n != 1 {
				t.Errorf("%d WARN lines for %d refused attempts, want 1:\n%s", n, c.Stats().Attempts, logs.String())
			}
			if !strings.Contains(logs.String(), "attempts=1") || !strings.Contains(logs.String(), "refused=") {
				t.Errorf("the WARN line lacks the count or the reason:\n%s", logs.String())
			}
		})
	}
}

// lockedBuffer is a log destination safe for the client's goroutines.
type lockedBuffer = testenv.Buffer
