package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/firmware/state"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

const root = protocol.DefaultRoot

// logBuffer collects a test's logs and prints them only if it fails, so
// goroutines that log while stopping never touch a finished test.
type logBuffer = testenv.Buffer

func newLogger(t *testing.T) *slog.Logger {
	log, _ := newLoggerBuffer(t)
	return log
}

// newLoggerBuffer is newLogger that also returns the buffer, for tests
// that check what was logged.
func newLoggerBuffer(t *testing.T) (*slog.Logger, *logBuffer) {
	lb := &logBuffer{}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("logs:\n%s", lb.String())
		}
	})
	return slog.New(slog.NewTextHandler(lb, &slog.HandlerOptions{Level: slog.LevelDebug})), lb
}

// env is one broker under test, with its PKI.
type env struct {
	t    *testing.T // of the broker's lifetime; subtests share it
	name string
	pki  *testenv.PKI
	url  string
	// down takes the broker away abruptly; up brings it back on the same
	// port with what it had stored.
	down, up func()
	// ctl is the one controller connection, shared by every test on this
	// broker: the embedded broker loses the subscriptions of a client that
	// reconnects under the same id while its previous session is still being
	// torn down (reported to its owner), so tests do not churn it.
	ctl *testenv.Client
}

// forEachBroker runs f against a real Mosquitto and the embedded broker.
func forEachBroker(t *testing.T, f func(t *testing.T, e *env)) {
	t.Run("mosquitto", func(t *testing.T) { f(t, mosquittoEnv(t)) })
	t.Run("embedded", func(t *testing.T) { f(t, embeddedEnv(t)) })
}

func mosquittoEnv(t *testing.T) *env {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Persistence: true})
	return &env{t: t, name: "mosquitto", pki: pki, url: m.URL(), down: m.Kill, up: m.Start}
}

func embeddedEnv(t *testing.T) *env {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(listen string) *broker.Broker {
		b, err := broker.New(broker.Options{Listen: listen, CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey, DataDir: dir, Logger: log})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		return b
	}
	var mu sync.Mutex
	b := start("127.0.0.1:0")
	port := b.Addr().(*net.TCPAddr).Port
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		if b != nil {
			b.Close()
		}
	})
	e := &env{t: t, name: "embedded", pki: pki, url: "mqtts://localhost:" + strconv.Itoa(port)}
	e.down = func() {
		mu.Lock()
		defer mu.Unlock()
		b.Close()
		b = nil
	}
	e.up = func() {
		mu.Lock()
		defer mu.Unlock()
		b = start(net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	}
	return e
}

// controller is a test client playing the controller for one device.
type controller struct {
	*testenv.Client
	t  *testing.T
	id string
}

// newController returns the controller's view of device id. The
// connection subscribes to every device; a test reads only id's topics.
func newController(t *testing.T, e *env, id string) *controller {
	if e.ctl == nil || !e.ctl.Paho.IsConnectionOpen() {
		e.ctl = e.pki.Connect(e.t, e.url, protocol.ControllerID)
		e.ctl.Subscribe(e.t, root+"/#", 1)
	}
	return &controller{Client: e.ctl, t: t, id: id}
}

// Messages returns the messages received on the device's topics.
func (c *controller) Messages() []testenv.Message {
	var out []testenv.Message
	for _, m := range c.Client.Messages() {
		if strings.HasPrefix(m.Topic, root+"/"+c.id+"/") {
			out = append(out, m)
		}
	}
	return out
}

// command publishes a Command payload on the device's cmd topic.
func (c *controller) command(payload string, retained bool) {
	c.t.Helper()
	c.Publish(c.t, protocol.Topic(root, c.id, protocol.KindCmd), 1, retained, []byte(payload))
}

// events returns every decoded Event received so far, in order.
func (c *controller) events() []protocol.Message {
	c.t.Helper()
	var out []protocol.Message
	for _, m := range c.Messages() {
		if m.Topic != protocol.Topic(root, c.id, protocol.KindEvent) {
			continue
		}
		ev, issues, err := protocol.DecodeMessage(m.Payload)
		if err != nil || len(issues) > 0 {
			c.t.Fatalf("device sent an invalid event %s: %v %v", m.Payload, err, issues)
		}
		out = append(out, ev)
	}
	return out
}

// waitEvent waits for an Event with clock vc and returns it with the
// events received before it.
func (c *controller) waitEvent(vc protocol.Clock) (protocol.Message, []protocol.Message) {
	c.t.Helper()
	topic := protocol.Topic(root, c.id, protocol.KindEvent)
	c.WaitMatch(c.t, fmt.Sprintf("event with clock %v", vc), func(m testenv.Message) bool {
		ev, _, err := protocol.DecodeMessage(m.Payload)
		return m.Topic == topic && err == nil && ev.VC == vc
	})
	evs := c.events()
	for i, ev := range evs {
		if ev.VC == vc {
			return ev, evs[:i]
		}
	}
	c.t.Fatalf("event %v vanished", vc)
	return protocol.Message{}, nil
}

// fakeThermostat stands in for the control loop: it records settings and
// reports a fixed reading.
type fakeThermostat struct {
	mu       sync.Mutex
	settings control.Settings
	history  []control.Settings
	snap     control.Snapshot
}

func newFakeThermostat() *fakeThermostat {
	return &fakeThermostat{snap: control.Snapshot{
		Time:           time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC),
		Temperature:    hal.Celsius(20.31),
		HasTemperature: true,
		SensorOK:       true,
		Outputs:        hal.Outputs{Heat: true},
	}}
}

func (f *fakeThermostat) SetSettings(s control.Settings) error {
	if err := s.Validate(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if s != f.settings {
		f.history = append(f.history, s)
	}
	f.settings = s
	return nil
}

func (f *fakeThermostat) Settings() control.Settings {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.settings
}

func (f *fakeThermostat) Snapshot() control.Snapshot {
	f.mu.Lock()
	defer f.mu.Unlock()
	s := f.snap
	s.Settings = f.settings
	return s
}

// device is a running agent with its transport, state dir and fake clock.
type device struct {
	t      *testing.T
	id     string
	dir    string
	agent  *Agent
	client *transport.Client
	therm  *fakeThermostat
	clock  *haltest.Clock
	store  *state.Store
	cancel context.CancelFunc
	done   chan error
	// logs is what the device logged.
	logs *logBuffer
}

type devOpts struct {
	syncTimeout time.Duration
	// start is the clock's time at start, testStart when zero.
	start time.Time
	// wrap, when set, wraps the state store (to make saves fail).
	wrap func(Store) Store
}

// fresh returns the stored state of a device that has finished a rejoin
// long ago and knows only the defaults: clock [0,0].
func fresh() *protocol.DeviceState {
	return &protocol.DeviceState{Replica: &protocol.Replica{
		Side: protocol.DeviceSide,
		Props: protocol.Props{
			protocol.PropSetpoint: {Val: 20.0},
			protocol.PropMode:     {Val: "off"},
		},
	}}
}

// startDevice runs a device on e from dir. With seed non-nil the dir is
// first given that state; otherwise what dir holds (nothing: first boot).
func startDevice(t *testing.T, e *env, id, dir string, seed *protocol.DeviceState, o devOpts) *device {
	t.Helper()
	store, err := state.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if seed != nil {
		if err := store.Save(*seed); err != nil {
			t.Fatal(err)
		}
	}
	var stored *protocol.DeviceState
	switch st, err := store.Load(); {
	case errors.Is(err, state.ErrNoState):
	case err != nil:
		t.Fatal(err)
	default:
		stored = &st
	}
	if o.syncTimeout == 0 {
		o.syncTimeout = time.Hour // fires only when the test advances the clock
	}
	if o.start.IsZero() {
		o.start = testStart
	}
	d := &device{t: t, id: id, dir: dir, therm: newFakeThermostat(), store: store, done: make(chan error, 2),
		clock: haltest.NewClock(o.start)}
	log, logs := newLoggerBuffer(t)
	d.logs = logs
	var st Store = store
	if o.wrap != nil {
		st = o.wrap(store)
	}
	d.agent, err = New(Config{ID: id, Store: st, Loop: d.therm, Clock: d.clock,
		SyncTimeout: o.syncTimeout, Logger: log}, stored)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := e.pki.Client(t, id)
	d.client, err = transport.New(transport.Options{
		Broker: e.url, CAFile: e.pki.CAFile, CertFile: cert, KeyFile: key,
		KeepAlive: 2 * time.Second,
		Will:      d.agent.Will(), Farewell: d.agent.Farewell(),
		OnConnect: d.agent.Connected, OnDisconnect: d.agent.Disconnected, Handler: d.agent.Handle,
		Logger: log,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	go func() { d.done <- d.agent.Run(ctx, d.client) }()
	go func() { d.done <- d.client.Run(ctx) }()
	t.Cleanup(d.stop)
	return d
}

// stop shuts the device down cleanly; safe to call twice.
func (d *device) stop() {
	if d.cancel == nil {
		return
	}
	d.cancel()
	d.cancel = nil
	for range 2 {
		if err := <-d.done; err != nil {
			d.t.Errorf("device %s stopped with %v", d.id, err)
		}
	}
	d.store.Close()
}

func (d *device) status() Status { return d.agent.Snapshot() }

func (d *device) set(changes map[string]any) {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer cancel()
	if err := d.agent.Set(ctx, changes); err != nil {
		d.t.Fatalf("set %v: %v", changes, err)
	}
}

func (d *device) waitConnected(want bool) {
	d.t.Helper()
	testenv.WaitFor(d.t, fmt.Sprintf("connected=%v", want), func() bool { return d.status().Connected == want })
}

var testStart = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
