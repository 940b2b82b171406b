package broker

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/internal/testenv"
)

// reconnectCycles is how many times each case of TestQuickReconnect
// replaces a device's connection. Before the fix about one in five quick
// reconnects lost the new session, so a missed race here is unlikely.
const reconnectCycles = 20

// TestQuickReconnect: a device that connects again under its id right after
// its previous connection ended, or while that one is still open, gets a
// working session every time: what it subscribes to (or, for a persistent
// session, what it had subscribed to) is delivered, its old connection's
// will never lands after its new "online", and its new will still works.
// mochi v2.7.9 let the old connection's cleanup run after the new session
// had started, removing the new session's subscriptions and the client
// itself (see sessionGate).
func TestQuickReconnect(t *testing.T) {
	const (
		id     = "d1"
		cmd    = "thermo/d1/cmd"
		status = "thermo/d1/status"
	)
	tests := []struct {
		name       string
		persistent bool
		// end is how the previous connection ends before the next one
		// connects: "disconnect", "cut", or "" to leave it open, so the
		// next one takes it over.
		end string
	}{
		{"clean session after disconnect", false, "disconnect"},
		{"clean session after cut", false, "cut"},
		{"clean session takeover", false, ""},
		{"persistent session after disconnect", true, "disconnect"},
		{"persistent session after cut", true, "cut"},
		{"persistent session takeover", true, ""},
	}
	pki := testenv.NewPKI(t)
	certFile, keyFile := pki.Client(t, id)
	tlsConf := pki.ClientTLS(t, certFile, keyFile)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// With a store, as in production: its writes in the old
			// connection's cleanup widen the window of the race.
			tb := startBroker(t, pki, t.TempDir(), nil)
			events := newEventLog(id)
			tb.OnClient(events.record)
			statuses := subscribe(t, tb.Broker, status)
			ctrl := pki.Connect(t, tb.url, controllerID)

			var prev *quickConn
			for n := range reconnectCycles + 1 {
				switch {
				case prev == nil:
				case tc.end == "disconnect":
					prev.disconnect()
				case tc.end == "cut":
					prev.cut()
				}
				c, sessionPresent, err := dialQuick(t, tb.url, tlsConf, id, tc.persistent, status, fmt.Sprintf("offline %d", n))
				if err != nil {
					t.Fatalf("cycle %d: %v", n, err)
				}
				if want := tc.persistent && n > 0; sessionPresent != want {
					t.Errorf("cycle %d: session present %v, want %v", n, sessionPresent, want)
				}
				if n == 0 || !tc.persistent {
					// A persistent session keeps its subscription.
					if tok := c.Subscribe(cmd, 1, nil); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
						t.Fatalf("cycle %d: subscribe: %v", n, tok.Error())
					}
				}
				online := fmt.Sprintf("online %d", n)
				if tok := c.Publish(status, 1, true, online); !tok.WaitTimeout(waitTimeout) || tok.Error() != nil {
					t.Fatalf("cycle %d: publish status: %v", n, tok.Error())
				}
				want := fmt.Sprintf("command %d", n)
				ctrl.Publish(t, cmd, 1, false, []byte(want))
				if !c.waitPayload(want) {
					t.Fatalf("cycle %d: %q never reached the new connection (got %q); broker log:\n%s",
						n, want, c.payloads(), strings.Join(tb.log.all(), "\n"))
				}
				// Its own "online" has been delivered (the will of an
				// old connection cannot come after it) and the broker
				// reports the device up.
				statuses.waitFor(t, status, online)
				if got := events.last(); got != id+" up" {
					t.Fatalf("cycle %d: last OnClient event %q, want %q (events %q)", n, got, id+" up", events.all())
				}
				prev = c
			}

			// The last connection's will still works.
			last := fmt.Sprintf("offline %d", reconnectCycles)
			prev.cut()
			statuses.waitFor(t, status, last)
			events.waitLast(t, id+" down")
			if late := subscribe(t, tb.Broker, status).all(); len(late) != 1 || late[0].payload != last {
				t.Errorf("retained status after the last will: %+v, want %q", late, last)
			}

			// No old will after a newer connection's "online", and none
			// at all where no connection ended abruptly.
			checkStatusOrder(t, statuses.all(), tc.end != "cut")
			checkUpDown(t, events.all(), id)
		})
	}
}

// checkStatusOrder checks the status messages of TestQuickReconnect: the
// will "offline n" of connection n may appear only before "online n+1",
// and only if noWill is false; the last message is the last will.
func checkStatusOrder(t *testing.T, msgs []inlineMsg, noWill bool) {
	t.Helper()
	newest := -1 // the newest connection whose "online" was seen
	for i, m := range msgs {
		var n int
		switch {
		case sscan(m.payload, "online %d", &n):
			if n <= newest {
				t.Errorf("status %d: %q after online %d", i, m.payload, newest)
			}
			newest = n
		case sscan(m.payload, "offline %d", &n):
			if n != reconnectCycles && noWill {
				t.Errorf("status %d: will %q of a connection that did not end abruptly", i, m.payload)
			}
			if n < newest {
				t.Errorf("status %d: will %q after online %d", i, m.payload, newest)
			}
		default:
			t.Errorf("status %d: unexpected %q", i, m.payload)
		}
	}
}

func sscan(s, format string, n *int) bool {
	_, err := fmt.Sscanf(s, format, n)
	return err == nil
}

// checkUpDown checks OnClient's events: never "down" without an "up"
// before it.
func checkUpDown(t *testing.T, events []string, id string) {
	t.Helper()
	up := false
	for i, e := range events {
		switch e {
		case id + " up":
			up = true
		case id + " down":
			if !up {
				t.Errorf("event %d: %q while already down: %q", i, e, events)
			}
			up = false
		default:
			t.Errorf("event %d: unexpected %q", i, e)
		}
	}
}

// eventLog records OnClient's events of one client id.
type eventLog struct {
	id     string
	mu     sync.Mutex
	events []string
	notify chan struct{}
}

func newEventLog(id string) *eventLog { return &eventLog{id: id, notify: make(chan struct{}, 1)} }

func (l *eventLog) record(id string, connected bool) {
	if id != l.id {
		return
	}
	l.mu.Lock()
	l.events = append(l.events, id+map[bool]string{true: " up", false: " down"}[connected])
	l.mu.Unlock()
	select {
	case l.notify <- struct{}{}:
	default:
	}
}

func (l *eventLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.events...)
}

func (l *eventLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.events) == 0 {
		return ""
	}
	return l.events[len(l.events)-1]
}

func (l *eventLog) waitLast(t *testing.T, want string) {
	t.Helper()
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for l.last() != want {
		select {
		case <-l.notify:
		case <-deadline.C:
			t.Fatalf("OnClient: last event %q, want %q (events %q)", l.last(), want, l.all())
		}
	}
}

// quickConn is one connection of a device in TestQuickReconnect: a paho
// client that records what it receives and whose TCP connection can be cut.
type quickConn struct {
	paho.Client
	mu     sync.Mutex
	conn   net.Conn
	msgs   []string
	notify chan struct{}
}

// dialQuick connects as id over TLS, with a retained QoS 1 will, and
// reports whether the broker had a session for it.
func dialQuick(t *testing.T, brokerURL string, tlsConf *tls.Config, id string, persistent bool, willTopic, will string) (*quickConn, bool, error) {
	t.Helper()
	c := &quickConn{notify: make(chan struct{}, 1)}
	opts := paho.NewClientOptions().
		AddBroker(brokerURL).
		SetClientID(id).
		SetCleanSession(!persistent).
		SetAutoReconnect(false).
		SetConnectTimeout(waitTimeout).
		SetWill(willTopic, will, 1, true).
		SetDefaultPublishHandler(func(_ paho.Client, m paho.Message) { c.record(string(m.Payload())) }).
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
	c.Client = paho.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(waitTimeout) {
		c.Disconnect(0)
		return nil, false, fmt.Errorf("connect %s: timed out", id)
	}
	if err := tok.Error(); err != nil {
		return nil, false, fmt.Errorf("connect %s: %w", id, err)
	}
	t.Cleanup(func() { c.Disconnect(0) })
	return c, tok.(*paho.ConnectToken).SessionPresent(), nil
}

func (c *quickConn) record(payload string) {
	c.mu.Lock()
	c.msgs = append(c.msgs, payload)
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

func (c *quickConn) payloads() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.msgs...)
}

// waitPayload waits up to waitTimeout for a message with payload.
func (c *quickConn) waitPayload(payload string) bool {
	deadline := time.NewTimer(waitTimeout)
	defer deadline.Stop()
	for {
		for _, p := range c.payloads() {
			if p == payload {
				return true
			}
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return false
		}
	}
}

// disconnect ends the connection cleanly (DISCONNECT, then close).
func (c *quickConn) disconnect() { c.Disconnect(250) }

// cut closes the TCP connection with no DISCONNECT, as a crash or a lost
// network would.
func (c *quickConn) cut() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.conn.Close()
}
