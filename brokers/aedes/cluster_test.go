package aedes

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/transport"
)

// TestAedesCluster: three nodes sharing one Redis (--redis) are one broker
// to their clients. A message published on one node reaches a subscriber
// on another; a retained message published on one is delivered by the
// others to a later subscriber; a device given the three addresses
// (transport's Failover) moves to the next node when its node is killed,
// finds its retained Command there and receives live ones routed from the
// controller's node. The ACL holds on every node.
func TestAedesCluster(t *testing.T) {
	pki := testenv.NewPKI(t)
	redis := testenv.StartRedis(t)
	var nodes []*aedes
	for _, id := range []string{"n1", "n2", "n3"} {
		nodes = append(nodes, startAedes(t, pki, "--redis", redis.URL(), "--id", id))
	}
	n1, n2, n3 := nodes[0], nodes[1], nodes[2]
	n1.waitLog(t, "listening", `node="n1"`, `redis="yes"`)

	ctrl := pki.Connect(t, n3.url, "controller")
	ctrl.Subscribe(t, "thermo/#", 1)
	d1 := pki.Connect(t, n1.url, "d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e1"))
	if m, _ := ctrl.WaitPayload(t, "thermo/d1/event", "e1"); m.Retained {
		t.Errorf("a live message routed from n1 to n3 has the retained flag")
	}
	late := pki.Connect(t, n2.url, "controller-b")
	late.Subscribe(t, "thermo/#", 1)
	if m, _ := late.WaitPayload(t, "thermo/d1/event", "e1"); !m.Retained {
		t.Errorf("the retained message published on n1 came from n2 without the retained flag")
	}
	// d1 may not write d2's topics, whichever node delivers them.
	d1.Publish(t, "thermo/d2/cmd", 1, false, []byte("forged"))
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("marker"))
	_, before := ctrl.WaitPayload(t, "thermo/d1/event", "marker")
	for _, m := range before {
		if string(m.Payload) == "forged" {
			t.Errorf("d1's forbidden publish was delivered on %s", m.Topic)
		}
	}

	// d2 follows the node list: n1 first.
	cert, key := pki.Client(t, "d2")
	var mu sync.Mutex
	var got []transport.Message
	changed := make(chan struct{}, 1)
	c, err := transport.New(transport.Options{Broker: n1.url, Failover: []string{n2.url, n3.url},
		CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
		Handler: func(m transport.Message) {
			mu.Lock()
			got = append(got, m)
			mu.Unlock()
			select {
			case changed <- struct{}{}:
			default:
			}
		},
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		t.Fatal(err)
	}
	c.Subscribe("thermo/d2/cmd", 1)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	received := func(what string, match func(transport.Message) bool) {
		t.Helper()
		testenv.WaitFor(t, what, func() bool {
			mu.Lock()
			defer mu.Unlock()
			for _, m := range got {
				if match(m) {
					return true
				}
			}
			return false
		})
	}
	ctrl.Publish(t, "thermo/d2/cmd", 1, true, []byte("c1"))
	received("c1 on n1", func(m transport.Message) bool { return string(m.Payload) == "c1" })
	if s := c.Stats(); s.Broker != n1.url {
		t.Fatalf("d2 on %s, want n1 %s", s.Broker, n1.url)
	}

	n1.kill(t)
	mu.Lock()
	got = nil
	mu.Unlock()
	received("c1 again, retained, on the next node", func(m transport.Message) bool { return string(m.Payload) == "c1" && m.Retained })
	if s := c.Stats(); s.Broker != n2.url || s.Connects != 2 {
		t.Fatalf("after n1 died: d2 on %s after %d connects, want n2 %s after 2", s.Broker, s.Connects, n2.url)
	}
	ctrl.Publish(t, "thermo/d2/cmd", 1, true, []byte("c2"))
	received("c2 live, routed from n3 to n2", func(m transport.Message) bool { return string(m.Payload) == "c2" && !m.Retained })
	if strings.Contains(strings.Join(n2.lines(), "\n"), "server error") {
		t.Errorf("n2 logged a server error")
	}
}

// TestAedesRetainedThenLive: a retained publish followed at once by a live
// one from the same client reaches a subscriber on its own node and on
// another. With Redis, a retained message is emitted only once stored, after
// the live one; aedes then took it for a duplicate (numberAtEmit in
// server.js): a device's status online followed by its telemetry lost the
// status, and the controller never greeted the device.
func TestAedesRetainedThenLive(t *testing.T) {
	pki := testenv.NewPKI(t)
	redis := testenv.StartRedis(t)
	n1 := startAedes(t, pki, "--redis", redis.URL(), "--id", "n1")
	n2 := startAedes(t, pki, "--redis", redis.URL(), "--id", "n2")
	near := pki.Connect(t, n1.url, "controller")
	far := pki.Connect(t, n2.url, "controller-b")
	for _, c := range []*testenv.Client{near, far} {
		c.Subscribe(t, "thermo/+/status", 1)
		c.Subscribe(t, "thermo/+/telemetry", 1)
	}
	for i, first := range []struct {
		qos      byte
		retained bool
	}{{1, true}, {0, true}, {1, false}} {
		id := "d" + string(rune('1'+i))
		d := pki.Connect(t, n1.url, id)
		d.Subscribe(t, "thermo/"+id+"/cmd", 1) // a device's own subscription
		d.Publish(t, "thermo/"+id+"/status", first.qos, first.retained, []byte("online"))
		d.Publish(t, "thermo/"+id+"/telemetry", 0, false, []byte("t"))
		for _, c := range []*testenv.Client{near, far} {
			c.WaitPayload(t, "thermo/"+id+"/telemetry", "t")
			c.WaitPayload(t, "thermo/"+id+"/status", "online")
		}
	}
}
