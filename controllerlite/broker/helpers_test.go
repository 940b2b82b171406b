package broker

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/internal/testenv"
)

const waitTimeout = testenv.WaitTimeout

// logRecorder is a slog.Handler that keeps every record as one line, so
// tests can wait for a logged reason. Handlers derived with WithAttrs share
// the lines.
type logRecorder struct {
	*logSink
	attrs string
}

type logSink struct {
	mu     sync.Mutex
	lines  []string
	notify chan struct{}
}

func newLogRecorder() *logRecorder {
	return &logRecorder{logSink: &logSink{notify: make(chan struct{}, 1)}}
}

func (r *logRecorder) Enabled(context.Context, slog.Level) bool { return true }

func (r *logRecorder) Handle(_ context.Context, rec slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s%s", rec.Level, rec.Message, r.attrs)
	rec.Attrs(func(a slog.Attr) bool {
		fmt.Fprintf(&b, " %s=%v", a.Key, a.Value)
		return true
	})
	r.mu.Lock()
	r.lines = append(r.lines, b.String())
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
	return nil
}

func (r *logRecorder) WithAttrs(as []slog.Attr) slog.Handler {
	s := r.attrs
	for _, a := range as {
		s += fmt.Sprintf(" %s=%v", a.Key, a.Value)
	}
	return &logRecorder{logSink: r.logSink, attrs: s}
}

func (r *logRecorder) WithGroup(string) slog.Handler { return r }

// add records a line that did not come through slog (a child's output).
func (r *logSink) add(line string) {
	r.mu.Lock()
	r.lines = append(r.lines, line)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

func (r *logSink) all() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.lines...)
}

// waitFor waits for a log line containing every one of parts.
func (r *logRecorder) waitFor(t *testing.T, parts ...string) string {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		for _, l := range r.all() {
			if containsAll(l, parts) {
				return l
			}
		}
		select {
		case <-r.notify:
		case <-deadline.C:
			t.Fatalf("no log line with %q; log:\n%s", parts, strings.Join(r.all(), "\n"))
		}
	}
}

func (r *logRecorder) has(parts ...string) bool {
	for _, l := range r.all() {
		if containsAll(l, parts) {
			return true
		}
	}
	return false
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// testBroker is a started Broker on a loopback port with its log recorded.
type testBroker struct {
	*Broker
	log *logRecorder
	url string
}

// startBroker starts a broker for pki with data dir dir ("" for memory).
// setup, if not nil, runs between New and Start.
func startBroker(t *testing.T, pki *testenv.PKI, dir string, setup func(*Broker)) *testBroker {
	t.Helper()
	return startBrokerWith(t, pki, Options{DataDir: dir}, setup)
}

// startBrokerWith is startBroker with more options: the listener, the
// credentials of pki (its CA unless o names another CA file) and the
// logger are set here.
func startBrokerWith(t *testing.T, pki *testenv.PKI, o Options, setup func(*Broker)) *testBroker {
	t.Helper()
	rec := newLogRecorder()
	o.Listen = "127.0.0.1:0"
	if o.CAFile == "" {
		o.CAFile = pki.CAFile
	}
	o.CertFile, o.KeyFile = pki.ServerCert, pki.ServerKey
	o.Logger = slog.New(rec)
	b, err := New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if setup != nil {
		setup(b)
	}
	if err := b.Start(); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return &testBroker{Broker: b, log: rec, url: "mqtts://" + b.Addr().String()}
}

// inlineMsg is a message delivered to an in-process subscription.
type inlineMsg struct {
	topic    string
	payload  string
	retained bool
}

// inbox collects what an in-process subscription receives.
type inbox struct {
	mu     sync.Mutex
	msgs   []inlineMsg
	notify chan struct{}
}

func newInbox() *inbox { return &inbox{notify: make(chan struct{}, 1)} }

func (in *inbox) handle(topic string, payload []byte, retained bool) {
	in.mu.Lock()
	in.msgs = append(in.msgs, inlineMsg{topic, string(payload), retained})
	in.mu.Unlock()
	select {
	case in.notify <- struct{}{}:
	default:
	}
}

func (in *inbox) all() []inlineMsg {
	in.mu.Lock()
	defer in.mu.Unlock()
	return append([]inlineMsg(nil), in.msgs...)
}

// waitFor waits for a message on topic with payload and returns it and the
// messages before it.
func (in *inbox) waitFor(t *testing.T, topic, payload string) (inlineMsg, []inlineMsg) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		msgs := in.all()
		for i, m := range msgs {
			if m.topic == topic && m.payload == payload {
				return m, msgs[:i]
			}
		}
		select {
		case <-in.notify:
		case <-deadline.C:
			t.Fatalf("no in-process message %q on %s; got %+v", payload, topic, msgs)
		}
	}
}

// subscribe adds an in-process subscription of b collecting into a new inbox.
func subscribe(t *testing.T, b *Broker, filter string) *inbox {
	t.Helper()
	in := newInbox()
	if err := b.Subscribe(filter, in.handle); err != nil {
		t.Fatalf("Subscribe(%q): %v", filter, err)
	}
	return in
}

// cuttable is a paho client whose TCP connection the test can cut, as a
// network failure or a power loss would, with no DISCONNECT.
type cuttable struct {
	paho.Client
	mu   sync.Mutex
	conn net.Conn
}

// connectCuttable connects as id with a will on topic/payload (retained,
// QoS 1) unless topic is empty.
func connectCuttable(t *testing.T, pki *testenv.PKI, brokerURL, id, willTopic, willPayload string) (*cuttable, error) {
	t.Helper()
	certFile, keyFile := pki.Client(t, id)
	tlsConf := pki.ClientTLS(t, certFile, keyFile)
	c := &cuttable{}
	opts := paho.NewClientOptions().
		AddBroker(brokerURL).
		SetClientID(id).
		SetAutoReconnect(false).
		SetConnectTimeout(waitTimeout).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			raw, err := net.DialTimeout("tcp", u.Host, waitTimeout)
			if err != nil {
				return nil, err
			}
			c.mu.Lock()
			c.conn = raw
			c.mu.Unlock()
			return tls.Client(raw, tlsConf), nil
		})
	if willTopic != "" {
		opts.SetWill(willTopic, willPayload, 1, true)
	}
	c.Client = paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		return nil, fmt.Errorf("connect %s: timed out", id)
	}
	if err := tok.Error(); err != nil {
		return nil, err
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, nil
}

// cut closes the TCP connection under TLS and MQTT.
func (c *cuttable) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.Close()
}
