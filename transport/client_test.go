package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/internal/testenv"
)

// recorder collects what a Client hands to its callbacks.
type recorder struct {
	mu          sync.Mutex
	msgs        []Message
	connects    int
	disconnects []time.Time
	troubles    []Trouble // the troubles that began
	changed     chan struct{}
}

func newRecorder() *recorder { return &recorder{changed: make(chan struct{}, 1)} }

func (r *recorder) poke() {
	select {
	case r.changed <- struct{}{}:
	default:
	}
}

func (r *recorder) options(o Options) Options {
	o.Handler = func(m Message) { r.mu.Lock(); r.msgs = append(r.msgs, m); r.mu.Unlock(); r.poke() }
	o.OnConnect = func(context.Context, *Client) { r.mu.Lock(); r.connects++; r.mu.Unlock(); r.poke() }
	o.OnDisconnect = func(error) {
		r.mu.Lock()
		r.disconnects = append(r.disconnects, time.Now())
		r.mu.Unlock()
		r.poke()
	}
	o.OnTrouble = func(tr Trouble, active bool, _ string) {
		if active {
			r.mu.Lock()
			r.troubles = append(r.troubles, tr)
			r.mu.Unlock()
		}
	}
	o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	return o
}

// wait polls cond each time a callback fires, up to a deadline.
func (r *recorder) wait(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond()
		r.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-r.changed:
		case <-deadline.C:
			r.mu.Lock()
			t.Fatalf("timed out after %v waiting for %s (connects %d, disconnects %d, msgs %d)", d, what, r.connects, len(r.disconnects), len(r.msgs))
		}
	}
}

func start(t *testing.T, o Options) *Client {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c
}

type brokerCase struct {
	name string
	url  func(t *testing.T, pki *testenv.PKI) string
}

var brokers = []brokerCase{
	{"mosquitto", func(t *testing.T, pki *testenv.PKI) string { return testenv.StartMosquitto(t, pki, nil).URL() }},
	{"embedded", func(t *testing.T, pki *testenv.PKI) string {
		b, err := broker.New(broker.Options{Listen: "127.0.0.1:0", CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
			Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		return "mqtts://localhost:" + strings.TrimPrefix(b.Addr().String()[strings.LastIndex(b.Addr().String(), ":"):], ":")
	}},
}

// TestPublishSubscribe: a device connects with its certificate, receives
// the retained message on its topic with the retained flag, publishes QoS 1,
// and its farewell goes out on a clean shutdown.
func TestPublishSubscribe(t *testing.T) {
	for _, bc := range brokers {
		t.Run(bc.name, func(t *testing.T) {
			pki := testenv.NewPKI(t)
			url := bc.url(t, pki)
			ctl := pki.Connect(t, url, "controller")
			ctl.Subscribe(t, "thermo/d1/#", 1)
			ctl.Publish(t, "thermo/d1/cmd", 1, true, []byte("retained-cmd"))

			cert, key := pki.Client(t, "d1")
			rec := newRecorder()
			c, err := New(rec.options(Options{Broker: url, CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
				Farewell: &Message{Topic: "thermo/d1/status", Payload: []byte("bye"), QoS: 1, Retained: true}}))
			if err != nil {
				t.Fatal(err)
			}
			if c.ID() != "d1" {
				t.Fatalf("id %q, want the certificate CN d1", c.ID())
			}
			c.Subscribe("thermo/d1/cmd", 1)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); c.Run(ctx) }()

			rec.wait(t, "retained command", 10*time.Second, func() bool { return len(rec.msgs) == 1 && rec.connects == 1 })
			if m := rec.msgs[0]; m.Topic != "thermo/d1/cmd" || string(m.Payload) != "retained-cmd" || !m.Retained {
				t.Fatalf("got %+v", m)
			}
			// The retained command came through the subscription, so it
			// was acknowledged, after the connection and no later than now.
			if s := c.Stats(); s.LastSubscribed.IsZero() || s.LastSubscribed.Before(s.LastConnected) || s.LastSubscribed.After(time.Now()) {
				t.Fatalf("stats %+v: LastSubscribed not between the connection and now", s)
			}
			if err := c.Publish(ctx, "thermo/d1/event", []byte("hello"), 1, true); err != nil {
				t.Fatal(err)
			}
			ctl.WaitPayload(t, "thermo/d1/event", "hello")
			// A live message has the retained flag clear.
			ctl.Publish(t, "thermo/d1/cmd", 1, true, []byte("live-cmd"))
			rec.wait(t, "live command", 10*time.Second, func() bool { return len(rec.msgs) == 2 })
			if m := rec.msgs[1]; string(m.Payload) != "live-cmd" || m.Retained {
				t.Fatalf("got %+v", m)
			}
			cancel()
			<-done
			ctl.WaitPayload(t, "thermo/d1/status", "bye")
			if err := c.Publish(context.Background(), "thermo/d1/event", nil, 1, false); err != ErrNotConnected {
				t.Fatalf("publish after shutdown: %v", err)
			}
		})
	}
}

// TestRefusesForeignBroker: a broker whose certificate is not from our CA
// is never connected to.
func TestRefusesForeignBroker(t *testing.T) {
	pki := testenv.NewPKI(t)
	url := testenv.StartMosquitto(t, pki, nil).URL()
	other := testenv.NewPKI(t)
	cert, key := other.Client(t, "d1")
	rec := newRecorder()
	c := start(t, rec.options(Options{Broker: url, CAFile: other.CAFile, CertFile: cert, KeyFile: key,
		Backoff: Backoff{Min: 10 * time.Millisecond, Max: 20 * time.Millisecond}}))
	deadline := time.Now().Add(10 * time.Second)
	for c.Stats().Attempts < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling a counter, bounded by the deadline
	}
	if s := c.Stats(); s.Attempts < 3 || s.Connects != 0 {
		t.Fatalf("stats %+v: want repeated refused attempts and no connection", s)
	}
}

// TestReconnectAfterKill: the broker is killed and restarted, again and
// again; the client comes back each time and subscribes again.
func TestReconnectAfterKill(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, "d1")
	rec := newRecorder()
	c := start(t, rec.options(Options{Broker: m.URL(), CAFile: pki.CAFile, CertFile: cert, KeyFile: key}))
	c.Subscribe("thermo/d1/event", 1) // a device reads its own event (rejoin) and may publish it
	for i := 1; i <= 4; i++ {
		if i > 1 {
			m.Kill()
			rec.wait(t, "loss noticed", 10*time.Second, func() bool { return len(rec.disconnects) == i-1 })
			if c.Connected() {
				t.Fatal("still connected with the broker dead")
			}
			if err := c.Publish(context.Background(), "thermo/d1/event", nil, 1, false); err != ErrNotConnected {
				t.Fatalf("publish while down: %v, want ErrNotConnected", err)
			}
			m.Start()
		}
		rec.wait(t, "connect", 10*time.Second, func() bool { return rec.connects == i })
		if err := c.Publish(context.Background(), "thermo/d1/event", []byte{byte(i)}, 1, false); err != nil {
			t.Fatal(err)
		}
		// Receiving its own message proves the subscription was renewed.
		rec.wait(t, "own message", 10*time.Second, func() bool { return len(rec.msgs) == i })
	}
	// Four short connections ended by the broker, within seconds: a
	// broker restarting, not a session taken over.
	rec.mu.Lock()
	defer rec.mu.Unlock()
	if len(rec.troubles) > 0 {
		t.Errorf("broker restarts reported as %v", rec.troubles)
	}
}

// TestHungBrokerDetected: a broker stopped with SIGSTOP keeps its sockets
// open; the liveness monitor must notice within 1.5 × keep-alive.
func TestHungBrokerDetected(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, "d1")
	rec := newRecorder()
	const ka = 2 * time.Second
	start(t, rec.options(Options{Broker: m.URL(), CAFile: pki.CAFile, CertFile: cert, KeyFile: key, KeepAlive: ka}))
	rec.wait(t, "connect", 10*time.Second, func() bool { return rec.connects == 1 })
	m.Stop()
	t.Cleanup(m.Cont)
	hung := time.Now()
	rec.wait(t, "hang noticed", 3*ka, func() bool { return len(rec.disconnects) == 1 })
	if d := rec.disconnects[0].Sub(hung); d > ka*3/2 {
		t.Errorf("hang noticed after %v, want within 1.5 × keep-alive (%v)", d, ka*3/2)
	}
	m.Cont()
	rec.wait(t, "reconnect after the broker continues", 15*time.Second, func() bool { return rec.connects == 2 })
}

func TestParseBroker(t *testing.T) {
	for in, want := range map[string]string{
		"mqtts://localhost:8883": "mqtts://localhost:8883",
		"mqtts://broker.lan":     "mqtts://broker.lan:8883",
		"ssl://10.0.0.2:9000":    "mqtts://10.0.0.2:9000",
		"mqtt://localhost:1883":  "plain-text",
		"tcp://localhost:1883":   "plain-text",
		"localhost:8883":         "want mqtts://",
		"mqtts://:8883":          "no host",
	} {
		u, err := ParseBroker(in)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = u.String()
		}
		if !strings.Contains(got, want) {
			t.Errorf("ParseBroker(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseBrokerOrPlain(t *testing.T) {
	for in, want := range map[string]string{
		"mqtt://localhost:1883": "mqtt://localhost:1883",
		"mqtt://ha.lan":         "mqtt://ha.lan:1883",
		"tcp://10.0.0.2":        "mqtt://10.0.0.2:1883",
		"mqtts://ha.lan":        "mqtts://ha.lan:8883",
		"ssl://ha.lan:8884":     "mqtts://ha.lan:8884",
		"mqtt://:1883":          "no host",
		"http://localhost:8123": "want mqtts://",
		"ha.lan:1883":           "want mqtts://",
	} {
		u, err := ParseBrokerOrPlain(in)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = u.String()
		}
		if !strings.Contains(got, want) {
			t.Errorf("ParseBrokerOrPlain(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestNewWithoutCertificate: a client of a password broker needs its id
// given; a plain broker needs AllowPlain.
func TestNewWithoutCertificate(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		want string // "" for success
	}{
		{"plain with id", Options{Broker: "mqtt://localhost:1883", AllowPlain: true, ClientID: "bridge", Username: "u", Password: "p"}, ""},
		{"TLS config with id", Options{Broker: "mqtts://localhost:8883", TLS: &tls.Config{}, ClientID: "bridge"}, ""},
		{"plain without AllowPlain", Options{Broker: "mqtt://localhost:1883", ClientID: "bridge"}, "plain-text"},
		{"plain without id", Options{Broker: "mqtt://localhost:1883", AllowPlain: true}, "ClientID is required"},
		{"TLS config without id", Options{Broker: "mqtts://localhost:8883", TLS: &tls.Config{}}, "ClientID is required"},
		{"failover plain", Options{Broker: "mqtts://a:8883", Failover: []string{"mqtt://b:1883"}, TLS: &tls.Config{}, ClientID: "c"}, "plain-text"},
		{"failover bad", Options{Broker: "mqtts://a:8883", Failover: []string{"mqtts://"}, TLS: &tls.Config{}, ClientID: "c"}, "no host"},
		{"failover list", Options{Broker: "mqtts://a:8883", Failover: []string{"mqtts://b", "tls://c:1"}, TLS: &tls.Config{}, ClientID: "c"}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := New(tc.o)
			if tc.want == "" {
				if err != nil || c.ID() != tc.o.ClientID {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want %q", err, tc.want)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	for _, tc := range []struct {
		n        int
		r        float64
		min, max time.Duration
	}{
		{0, 0, 50 * time.Millisecond, 50 * time.Millisecond},
		{0, 0.999, 50 * time.Millisecond, 100 * time.Millisecond},
		{3, 0.5, 600 * time.Millisecond, 600 * time.Millisecond},
		{10, 0, 500 * time.Millisecond, 500 * time.Millisecond},
		{60, 0.999, 999 * time.Millisecond, time.Second},
	} {
		b := Backoff{Min: 100 * time.Millisecond, Max: time.Second, Rand: func() float64 { return tc.r }}
		if d := b.Delay(tc.n); d < tc.min || d > tc.max {
			t.Errorf("Delay(%d) with r=%v = %v, want in [%v, %v]", tc.n, tc.r, d, tc.min, tc.max)
		}
	}
}

// TestRefusedWaitsHalf: an attempt the broker's host refuses (nothing
// listening: a broker restarting) is retried after half the backoff
// (Backoff.After); a lost connection or another failure waits the whole
// of it. The refusal is a real one, through paho and the dialler, so a
// change that hid the error's cause would fail here.
func TestRefusedWaitsHalf(t *testing.T) {
	pki := testenv.NewPKI(t)
	cert, key := pki.Client(t, "d1")
	b := Backoff{Min: 400 * time.Millisecond, Max: 400 * time.Millisecond, Rand: func() float64 { return 0.5 }}
	c, err := New(Options{
		Broker: fmt.Sprintf("mqtts://127.0.0.1:%d", testenv.FreePort(t)), CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, refused := c.connect(context.Background())
	if !errors.Is(refused, syscall.ECONNREFUSED) {
		t.Fatalf("connect to a closed port: %v, want an error that is ECONNREFUSED", refused)
	}
	for _, tc := range []struct {
		name string
		err  error
		want time.Duration
	}{
		{"refused by the host", refused, 150 * time.Millisecond},
		{"connection lost", io.EOF, 300 * time.Millisecond},
		{"handshake timed out", fmt.Errorf("connect: %w", os.ErrDeadlineExceeded), 300 * time.Millisecond},
	} {
		if got := b.After(0, tc.err); got != tc.want {
			t.Errorf("%s: wait %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCheckKeepAlive(t *testing.T) {
	for _, tc := range []struct {
		d  time.Duration
		ok bool
	}{
		{time.Second, true}, {15 * time.Second, true}, {0, false},
		{500 * time.Millisecond, false}, {1500 * time.Millisecond, false},
	} {
		if err := CheckKeepAlive(tc.d); (err == nil) != tc.ok {
			t.Errorf("CheckKeepAlive(%v) = %v, want ok %v", tc.d, err, tc.ok)
		}
	}
}

// TestFailover: two Mosquitto brokers sharing nothing, given as Broker and
// Failover. The client starts on the first, moves to the second when the
// first is killed, subscribes again there, and moves back when the second
// dies and the first is up again; a first broker that is down at start is
// passed over.
func TestFailover(t *testing.T) {
	pki := testenv.NewPKI(t)
	a := testenv.StartMosquitto(t, pki, nil)
	b := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, "d1")
	rec := newRecorder()
	c := start(t, rec.options(Options{Broker: a.URL(), Failover: []string{b.URL()}, CAFile: pki.CAFile, CertFile: cert, KeyFile: key}))
	c.Subscribe("thermo/d1/event", 1)
	for i, step := range []struct {
		name string
		do   func()
		want *testenv.Mosquitto
	}{
		{"first broker", func() {}, a},
		{"first killed: second", a.Kill, b},
		{"second killed, first back: first", func() { a.Start(); b.Kill() }, a},
	} {
		step.do()
		rec.wait(t, step.name+": connect", 15*time.Second, func() bool { return rec.connects == i+1 })
		if got := c.Stats().Broker; got != step.want.URL() {
			t.Fatalf("%s: connected to %s, want %s", step.name, got, step.want.URL())
		}
		if err := c.Publish(context.Background(), "thermo/d1/event", []byte{byte(i)}, 1, false); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		// Receiving its own message proves the subscription is on this broker.
		rec.wait(t, step.name+": own message", 10*time.Second, func() bool { return len(rec.msgs) == i+1 })
	}

	// A first broker that is down from the start is passed over.
	rec2 := newRecorder()
	down := "mqtts://localhost:" + strconv.Itoa(testenv.FreePort(t))
	c2 := start(t, rec2.options(Options{Broker: down, Failover: []string{a.URL()}, CAFile: pki.CAFile, CertFile: cert, KeyFile: key}))
	rec2.wait(t, "connect past a dead first broker", 15*time.Second, func() bool { return rec2.connects == 1 })
	if got := c2.Stats().Broker; got != a.URL() {
		t.Fatalf("connected to %s, want %s", got, a.URL())
	}
}
