package fleet

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// meterRec is a Meter that keeps what it hears.
type meterRec struct {
	mu      sync.Mutex
	commits int
	resyncs []string // "id duration"
}

func (m *meterRec) Committed(time.Duration) { m.mu.Lock(); m.commits++; m.mu.Unlock() }
func (m *meterRec) Resynced(id string, d time.Duration) {
	m.mu.Lock()
	m.resyncs = append(m.resyncs, fmt.Sprintf("%s %v", id, d))
	m.mu.Unlock()
}

func (m *meterRec) heard() (int, []string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.commits, append([]string(nil), m.resyncs...)
}

// pubRec is a broker link that keeps the Commands published, by topic.
type pubRec struct {
	mu   sync.Mutex
	msgs map[string][]protocol.Message
}

func (p *pubRec) Publish(_ context.Context, topic string, payload []byte, _ byte, _ bool) error {
	m, _, err := protocol.DecodeMessage(payload)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.msgs[topic] = append(p.msgs[topic], m)
	p.mu.Unlock()
	return nil
}

func (p *pubRec) count(topic string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.msgs[topic])
}

// meteredFleet runs a fleet with a recording Meter, a clock the test
// moves, and a recording link, ready.
func meteredFleet(t *testing.T) (*Fleet, *meterRec, *pubRec, func(time.Duration)) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var now atomic.Int64
	now.Store(time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC).UnixNano())
	m := &meterRec{}
	log, _ := newLogger(t)
	f, err := New(Options{Store: st, Logger: log, Meter: m, Now: func() time.Time { return time.Unix(0, now.Load()) }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })
	p := &pubRec{msgs: map[string][]protocol.Message{}}
	f.LinkUp(p, true)
	select {
	case <-f.Ready():
	case <-time.After(waitTimeout):
		t.Fatal("fleet not ready")
	}
	return f, m, p, func(d time.Duration) { now.Add(int64(d)) }
}

// TestRejectReasons: each message the fleet refuses is counted under its
// topic's kind and one reason of the fixed set, and under nothing else.
func TestRejectReasons(t *testing.T) {
	f, _, _, _ := meteredFleet(t)
	const maxC = "4503599627370496" // protocol.MaxCounter
	tests := []struct {
		name, topic, payload string
		kind, reason         string
	}{
		{"bad device id", "thermo/Not_An_Id/event", `{"v":1,"vc":[0,1],"props":{}}`, "event", ReasonBadTopic},
		{"unknown kind", "thermo/d1/weather", `{}`, KindUnknown, ReasonBadTopic},
		{"too many levels", "thermo/d1/x/status", `{"v":1,"online":true}`, "status", ReasonBadTopic},
		{"the controller's id", "thermo/controller/status", `{"v":1,"online":true}`, "status", ReasonReservedID},
		{"over 4096 bytes", "thermo/d1/telemetry", `{"v":1,"pad":"` + strings.Repeat("x", protocol.MaxPayload) + `"}`, "telemetry", ReasonTooLarge},
		{"not JSON", "thermo/d1/event", `{not json`, "event", ReasonInvalid},
		{"another version", "thermo/d1/status", `{"v":2,"online":true}`, "status", ReasonInvalid},
		{"counter over 2^52", "thermo/d1/event", `{"v":1,"vc":[4503599627370497,1],"props":{}}`, "event", ReasonInvalid},
		{"telemetry without ts", "thermo/d1/telemetry", `{"v":1,"heat":false}`, "telemetry", ReasonInvalid},
		{"event at the controller's limit", "thermo/d1/event", `{"v":1,"vc":[` + maxC + `,1],"props":{}}`, "event", ReasonClockExhausted},
		{"command at the limit", "thermo/d1/cmd", `{"v":1,"vc":[` + maxC + `,0],"props":{}}`, "cmd", ReasonClockExhausted},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f.Receive(tc.topic, []byte(tc.payload), false)
			testenv.Eventually(t, waitTimeout, "the rejection counted", func() (bool, string) {
				st := f.Status()
				return st.Rejected == uint64(i+1), fmt.Sprintf("%d rejected", st.Rejected)
			})
			c := f.Counts()
			for _, kind := range CountedKinds {
				for _, reason := range RejectReasons {
					want := uint64(0)
					for _, prev := range tests[:i+1] {
						if prev.kind == kind && prev.reason == reason {
							want++
						}
					}
					if got := c.Rejected[kind][reason]; got != want {
						t.Errorf("rejected{%s,%s} = %d, want %d", kind, reason, got, want)
					}
				}
			}
		})
	}
	c := f.Counts()
	var sum uint64
	for _, n := range c.Received {
		sum += n
	}
	if st := f.Status(); sum != st.Received || c.Received[KindUnknown] != 1 || c.Received["event"] != 4 {
		t.Errorf("received by kind %v (sum %d), total %d", c.Received, sum, st.Received)
	}
}

// TestResync: a resync runs from a live status online to the first live
// Event whose clock has seen the greeting; an Event from before the
// greeting does not end it, a status offline cancels it, and a retained
// online starts none.
func TestResync(t *testing.T) {
	f, m, p, advance := meteredFleet(t)
	greeted := func(id string, n int) protocol.Message {
		t.Helper()
		topic := protocol.Topic(protocol.DefaultRoot, id, protocol.KindCmd)
		testenv.WaitFor(t, fmt.Sprintf("%s: command %d", id, n), func() bool { return p.count(topic) >= n })
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.msgs[topic][n-1]
	}
	// event sends a live Event and waits until the fleet has committed it.
	event := func(id string, c, d uint64) {
		t.Helper()
		f.Receive(topic(id, protocol.KindEvent), fmt.Appendf(nil, `{"v":1,"vc":[%d,%d],"props":{}}`, c, d), false)
		testenv.WaitFor(t, fmt.Sprintf("%s: event [%d,%d] applied", id, c, d), func() bool {
			dv, ok := f.Device(id)
			return ok && dv.VC[protocol.DeviceIdx] >= d
		})
	}
	online, offline := string(protocol.Status{Online: true}.Encode()), string(protocol.Status{}.Encode())

	// d1: online; its Event from before the greeting leaves it
	// resyncing; the one that has seen the greeting ends it, 5 s later.
	f.Receive(topic("d1", protocol.KindStatus), []byte(online), false)
	g := greeted("d1", 1)
	advance(3 * time.Second)
	event("d1", 0, 1)
	if _, r := m.heard(); len(r) != 0 {
		t.Fatalf("resync ended by an Event that had not seen the greeting: %v", r)
	}
	advance(2 * time.Second)
	event("d1", g.VC[protocol.ControllerIdx], 2)
	advance(time.Second)
	event("d1", g.VC[protocol.ControllerIdx], 3) // once only

	// d2: offline before its Event: no figure.
	f.Receive(topic("d2", protocol.KindStatus), []byte(online), false)
	g2 := greeted("d2", 1)
	f.Receive(topic("d2", protocol.KindStatus), []byte(offline), false)
	event("d2", g2.VC[protocol.ControllerIdx], 1)

	// d3: online retained (it came online before this controller): no
	// figure.
	f.Receive(topic("d3", protocol.KindStatus), []byte(online), true)
	g3 := greeted("d3", 1)
	event("d3", g3.VC[protocol.ControllerIdx], 1)

	commits, resyncs := m.heard()
	if want := []string{"d1 5s"}; fmt.Sprint(resyncs) != fmt.Sprint(want) {
		t.Errorf("resyncs %v, want %v", resyncs, want)
	}
	if commits == 0 {
		t.Error("no commit was timed")
	}
}
