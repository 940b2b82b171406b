package agent

import (
	"context"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/firmware/state"
	"github.com/thermofleet/thermo/hal/haltest"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// offlineConn is a connection that is down: the broker can never deliver
// another device's messages to a device, so topic checks are driven
// directly through Handle.
type offlineConn struct {
	mu   sync.Mutex
	subs []string
}

func (c *offlineConn) Publish(context.Context, string, []byte, byte, bool) error {
	return transport.ErrNotConnected
}
func (c *offlineConn) Subscribe(f string, _ byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, f)
	return nil
}
func (c *offlineConn) Unsubscribe(string) error { return nil }
func (c *offlineConn) Connected() bool          { return false }

func TestWrongTopicsRejected(t *testing.T) {
	store, err := state.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	a, err := New(Config{ID: "d1", Store: store, Loop: newFakeThermostat(), Clock: haltest.NewClock(testStart), Logger: newLogger(t)}, fresh())
	if err != nil {
		t.Fatal(err)
	}
	conn := &offlineConn{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, conn) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()

	good := []byte(`{"v":1,"vc":[1,0],"props":{"mode":{"val":"heat","w":[1,0]}}}`)
	topics := []string{
		"thermo/d2/cmd",     // another device
		"other/d1/cmd",      // outside the root
		"thermo/D1/cmd",     // not a device id
		"thermo/d1/cmd/x",   // too deep
		"thermo/d1/status",  // a kind the device does not take
		"thermo/d1/unknown", // no such kind
	}
	for _, topic := range topics {
		a.Handle(transport.Message{Topic: topic, Payload: good, QoS: 1})
	}
	testenv.WaitFor(t, "rejections", func() bool { return a.Snapshot().Counters.Rejected == uint64(len(topics)) })
	if st := a.Snapshot(); st.VC != vc(0, 0) || st.Effective[protocol.PropMode] != "off" {
		t.Fatalf("a message on a wrong topic changed the state: %+v", st)
	}
	// The same payload on the right topic applies.
	a.Handle(transport.Message{Topic: "thermo/d1/cmd", Payload: good, QoS: 1})
	testenv.WaitFor(t, "command applied", func() bool { return a.Snapshot().Effective[protocol.PropMode] == "heat" })
	if c := a.Snapshot().Counters; c.Rejected != uint64(len(topics)) || c.Applied != 1 {
		t.Errorf("counters %+v", c)
	}
	conn.mu.Lock()
	defer conn.mu.Unlock()
	if len(conn.subs) != 1 || conn.subs[0] != "thermo/d1/cmd" {
		t.Errorf("subscriptions %v, want only the device's cmd", conn.subs)
	}
}
