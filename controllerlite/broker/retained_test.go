package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestRetainedExpiry: mochi's once-a-second copy of every retained message
// stays stopped while no retained message can expire (the fleet's, MQTT
// 3.1.1), and MQTT 5's message expiry still works once one can. If this
// fails at "not found", a new mochi lays out its Server otherwise: see
// retained.go.
func TestRetainedExpiry(t *testing.T) {
	pki := testenv.NewPKI(t)
	b := startBroker(t, pki, t.TempDir(), nil)
	if b.retained == nil {
		_, err := retainedExpiryTicker(b.srv)
		t.Fatalf("mochi's retained-expiry ticker not found: %v", err)
	}
	retained := func(topic string) bool { _, ok := b.srv.Topics.Retained.Get(topic); return ok }

	if err := b.srv.Publish("thermo/d1/cmd", []byte(`{"v":1}`), true, 1); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, waitTimeout, "the MQTT 3.1.1 message retained", func() (bool, string) {
		return retained("thermo/d1/cmd"), "not retained"
	})
	if b.retained.on.Load() {
		t.Fatal("a retained message without expiry started mochi's retained-expiry ticker")
	}

	cl := b.srv.NewClient(nil, "local", "inline-v5", true)
	cl.Properties.ProtocolVersion = 5
	if err := b.srv.InjectPacket(cl, packets.Packet{
		FixedHeader:     packets.FixedHeader{Type: packets.Publish, Retain: true},
		TopicName:       "thermo/d2/cmd",
		Payload:         []byte(`{"v":2}`),
		ProtocolVersion: 5,
		Properties:      packets.Properties{MessageExpiryInterval: 1},
	}); err != nil {
		t.Fatal(err)
	}
	if !b.retained.on.Load() {
		t.Fatal("a retained MQTT 5 message with an expiry did not start mochi's retained-expiry ticker")
	}
	start := time.Now()
	testenv.Eventually(t, 10*time.Second, "the MQTT 5 message expired", func() (bool, string) {
		return !retained("thermo/d2/cmd"), fmt.Sprintf("still retained %v after publish", time.Since(start).Round(time.Millisecond))
	})
	if !retained("thermo/d1/cmd") {
		t.Error("the MQTT 3.1.1 message without expiry was removed too")
	}
}
