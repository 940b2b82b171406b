package fleet

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

const waitTimeout = testenv.WaitTimeout

// logSink keeps every log line, so tests can check a logged reason and
// failed tests can show what happened.
type logSink struct {
	mu    sync.Mutex
	lines []string
}

type logHandler struct {
	sink  *logSink
	attrs string
}

func (h logHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h logHandler) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s %s%s", r.Time.Format("15:04:05.000"), r.Level, r.Message, h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	h.sink.mu.Lock()
	h.sink.lines = append(h.sink.lines, b.String())
	h.sink.mu.Unlock()
	return nil
}

func (h logHandler) WithAttrs(as []slog.Attr) slog.Handler {
	s := h.attrs
	for _, a := range as {
		s += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return logHandler{sink: h.sink, attrs: s}
}

func (h logHandler) WithGroup(string) slog.Handler { return h }

func (s *logSink) contains(parts ...string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, l := range s.lines {
		ok := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func newLogger(t *testing.T) (*slog.Logger, *logSink) {
	sink := &logSink{}
	t.Cleanup(func() {
		if t.Failed() {
			sink.mu.Lock()
			defer sink.mu.Unlock()
			t.Logf("log:\n%s", strings.Join(sink.lines, "\n"))
		}
	})
	return slog.New(logHandler{sink: sink}), sink
}

// env is a broker of one kind with a PKI, and fleets started against it.
type env struct {
	t    *testing.T
	kind string
	pki  *testenv.PKI
	log  *slog.Logger
	logs *logSink
	url  string
	b    *broker.Broker     // embedded
	m    *testenv.Mosquitto // external
}

var kinds = []string{"embedded", "mosquitto"}

// forEachBroker runs a scenario against the embedded broker and a real
// Mosquitto.
func forEachBroker(t *testing.T, fn func(t *testing.T, e *env)) {
	for _, k := range kinds {
		t.Run(k, func(t *testing.T) { fn(t, newEnv(t, k, nil)) })
	}
}

func newEnv(t *testing.T, kind string, mopts *testenv.MosquittoOptions) *env {
	t.Helper()
	e := &env{t: t, kind: kind, pki: testenv.NewPKI(t)}
	e.log, e.logs = newLogger(t)
	switch kind {
	case "embedded":
		b, err := broker.New(broker.Options{
			Listen: "127.0.0.1:0", CAFile: e.pki.CAFile, CertFile: e.pki.ServerCert, KeyFile: e.pki.ServerKey,
			DataDir: t.TempDir(), Logger: e.log.With("part", "broker"),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { b.Close() })
		_, port, _ := net.SplitHostPort(b.Addr().String())
		e.b, e.url = b, "mqtts://localhost:"+port
	case "mosquitto":
		e.m = testenv.StartMosquitto(t, e.pki, mopts)
		e.url = e.m.URL()
	}
	return e
}

// running is a fleet started by env.start.
type running struct {
	*Fleet
	st   *store.Store
	dir  string
	stop func()
}

// start runs a fleet with its store in dir, linked to the broker, and
// stops it when the test ends.
func (e *env) start(dir string) *running {
	t := e.t
	t.Helper()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Options{Store: st, Logger: e.log.With("part", "fleet"), FlushInterval: 50 * time.Millisecond})
	if err != nil {
		st.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); f.Run(ctx) }()
	switch {
	case e.b != nil:
		if err := AttachBroker(f, e.b); err != nil {
			t.Fatal(err)
		}
	default:
		cert, key := e.pki.Client(t, protocol.ControllerID)
		c, err := Connect(f, transport.Options{
			Broker: e.url, CAFile: e.pki.CAFile, CertFile: cert, KeyFile: key,
			Logger: e.log.With("part", "transport"),
		})
		if err != nil {
			t.Fatal(err)
		}
		wg.Add(1)
		go func() { defer wg.Done(); c.Run(ctx) }()
	}
	var once sync.Once
	r := &running{Fleet: f, st: st, dir: dir}
	r.stop = func() {
		once.Do(func() {
			cancel()
			wg.Wait()
			st.Close()
		})
	}
	t.Cleanup(r.stop)
	return r
}

func (r *running) waitReady(t *testing.T) {
	t.Helper()
	select {
	case <-r.Ready():
	case <-time.After(waitTimeout):
		t.Fatal("fleet not ready")
	}
}

// waitDevice waits until the fleet's view of id satisfies cond.
func (r *running) waitDevice(t *testing.T, id, what string, cond func(Device) bool) Device {
	t.Helper()
	var d Device
	testenv.WaitFor(t, id+": "+what, func() bool {
		var ok bool
		d, ok = r.Device(id)
		return ok && cond(d)
	})
	return d
}

// device is a thermostat played by a test client.
type device struct {
	id  string
	c   *testenv.Client
	seq int
}

func (e *env) device(t *testing.T, id string) *device {
	t.Helper()
	cert, key := e.pki.Client(t, id)
	c := testenv.Connect(t, e.url, testenv.ClientOptions{
		CAFile: e.pki.CAFile, CertFile: cert, KeyFile: key,
		Will: &testenv.Message{Topic: topic(id, protocol.KindStatus), Payload: protocol.Status{}.Encode(), QoS: 1, Retained: true},
	})
	c.Subscribe(t, topic(id, protocol.KindCmd), 1)
	return &device{id: id, c: c}
}

func topic(id string, k protocol.Kind) string { return protocol.Topic(protocol.DefaultRoot, id, k) }

func (d *device) publish(t *testing.T, k protocol.Kind, payload string) {
	t.Helper()
	qos, retain := byte(1), true
	if k == protocol.KindTelemetry {
		qos, retain = 0, false
	}
	d.c.Publish(t, topic(d.id, k), qos, retain, []byte(payload))
}

// event publishes an Event with the given clock and props, as JSON text
// of the props object.
func (d *device) event(t *testing.T, vc protocol.Clock, props string) {
	t.Helper()
	d.publish(t, protocol.KindEvent, fmt.Sprintf(`{"v":1,"vc":[%d,%d],"props":%s,"src":"local"}`, vc[0], vc[1], props))
}

func (d *device) status(t *testing.T, online bool) {
	t.Helper()
	d.publish(t, protocol.KindStatus, string(protocol.Status{Online: online}.Encode()))
}

// barrier publishes a telemetry message with a fresh marker and waits
// until the fleet shows it: everything the device published before has
// been processed.
func (d *device) barrier(t *testing.T, r *running) {
	t.Helper()
	d.seq++
	temp := float64(d.seq)
	d.publish(t, protocol.KindTelemetry, fmt.Sprintf(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":%v,"heat":false,"cool":false,"sensor_ok":true}`, temp))
	r.waitDevice(t, d.id, fmt.Sprintf("telemetry marker %v", temp), func(dv Device) bool {
		var tm protocol.Telemetry
		return json.Unmarshal(dv.Telemetry, &tm) == nil && tm.TempC != nil && *tm.TempC == temp
	})
}

// waitCmd waits for a Command matching cond and returns it decoded.
func (d *device) waitCmd(t *testing.T, what string, cond func(m protocol.Message, retained bool) bool) (protocol.Message, bool) {
	t.Helper()
	var got protocol.Message
	msg, _ := d.c.WaitMatch(t, d.id+" command "+what, func(m testenv.Message) bool {
		if m.Topic != topic(d.id, protocol.KindCmd) {
			return false
		}
		dm, _, err := protocol.DecodeMessage(m.Payload)
		if err != nil || !cond(dm, m.Retained) {
			return false
		}
		got = dm
		return true
	})
	return got, msg.Retained
}

func setpoint(p protocol.Props) float64 { v, _ := p.Setpoint(); return v }
func mode(p protocol.Props) string      { v, _ := p.Mode(); return v }
