package broker

import (
	"strings"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestInline: the controller's in-process Publish and Subscribe, with the
// retained flag telling retained messages (at subscribe time) from live ones.
func TestInline(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	d1 := pki.Connect(t, tb.url, "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)

	// Retained before the subscription: delivered at Subscribe, flagged.
	if err := tb.Publish("thermo/d1/cmd", []byte("c1"), true, 1); err != nil {
		t.Fatal(err)
	}
	d1.WaitPayload(t, "thermo/d1/cmd", "c1")
	// QoS 1: each returns after the broker's PUBACK, sent once the
	// message is handled (and retained).
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e1"))
	d1.Publish(t, "thermo/d1/telemetry", 1, false, []byte("not retained"))

	in := subscribe(t, tb.Broker, "thermo/#")
	got := in.all()
	want := map[string]string{"thermo/d1/cmd": "c1", "thermo/d1/event": "e1"}
	if len(got) != len(want) {
		t.Fatalf("retained at subscribe: %+v, want %v", got, want)
	}
	for _, m := range got {
		if want[m.topic] != m.payload || !m.retained {
			t.Errorf("retained at subscribe: %+v", m)
		}
	}

	// Live messages, retained or not when published, arrive with retained
	// false: from a device, and from the in-process side itself.
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e2"))
	m, _ := in.waitFor(t, "thermo/d1/event", "e2")
	if m.retained {
		t.Error("live retained publish from a device delivered with retained true")
	}
	if err := tb.Publish("thermo/d1/cmd", []byte("c2"), true, 1); err != nil {
		t.Fatal(err)
	}
	m, _ = in.waitFor(t, "thermo/d1/cmd", "c2")
	if m.retained {
		t.Error("live retained in-process publish delivered with retained true")
	}
	// The device got the in-process publish, live (not retained).
	dm, _ := d1.WaitPayload(t, "thermo/d1/cmd", "c2")
	if dm.Retained {
		t.Error("device got a live command flagged retained")
	}

	// The payload handed to a handler is its own.
	var mu sync.Mutex
	var kept []byte
	if err := tb.Subscribe("thermo/d1/status", func(_ string, p []byte, _ bool) {
		mu.Lock()
		kept = p
		mu.Unlock()
	}); err != nil {
		t.Fatal(err)
	}
	d1.Publish(t, "thermo/d1/status", 1, false, []byte("online"))
	in.waitFor(t, "thermo/d1/status", "online")
	mu.Lock()
	if string(kept) != "online" {
		t.Errorf("handler payload %q", kept)
	}
	mu.Unlock()
}

func TestInlineRejectsBadTopics(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	nop := func(string, []byte, bool) {}
	pubs := []struct {
		topic string
		qos   byte
	}{
		{"", 1}, {"thermo/+/cmd", 1}, {"thermo/#", 1}, {"other/d1/cmd", 1}, {"thermostat/d1", 1},
		{"$SYS/x", 0}, {"thermo/d1/cmd", 3},
	}
	for _, p := range pubs {
		if err := tb.Publish(p.topic, []byte("x"), false, p.qos); err == nil {
			t.Errorf("Publish(%q, qos %d) succeeded", p.topic, p.qos)
		}
	}
	for _, f := range []string{"", "#", "+/d1/cmd", "other/#", "thermo/#/x", "$SYS/#"} {
		if err := tb.Subscribe(f, nop); err == nil {
			t.Errorf("Subscribe(%q) succeeded", f)
		}
	}
	if err := tb.Subscribe("thermo/#", nil); err == nil {
		t.Error("Subscribe with a nil handler succeeded")
	}
	tb.Close()
	if err := tb.Publish("thermo/d1/cmd", []byte("x"), false, 1); err == nil || !strings.Contains(err.Error(), "not running") {
		t.Errorf("Publish after Close: %v", err)
	}
	if err := tb.Subscribe("thermo/#", nop); err == nil {
		t.Error("Subscribe after Close succeeded")
	}
}

// TestWill: an abrupt disconnect publishes the device's will; a clean one
// does not; a reconnect that takes over the session suppresses the old
// connection's will so it cannot land after the new "online".
func TestWill(t *testing.T) {
	const (
		status  = "thermo/d1/status"
		offline = `{"v":1,"online":false}`
		online  = `{"v":1,"online":true}`
	)
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	events := make(chan string, 16)
	tb.OnClient(func(id string, connected bool) {
		events <- id + map[bool]string{true: " up", false: " down"}[connected]
	})
	expectEvent := func(want string) {
		t.Helper()
		if got := <-events; got != want {
			t.Fatalf("OnClient: %q, want %q", got, want)
		}
	}
	in := subscribe(t, tb.Broker, "thermo/+/status")

	t.Run("abrupt disconnect sends the will", func(t *testing.T) {
		c, err := connectCuttable(t, pki, tb.url, "d1", status, offline)
		if err != nil {
			t.Fatal(err)
		}
		expectEvent("d1 up")
		c.Publish(status, 1, true, online).Wait()
		in.waitFor(t, status, online)
		c.cut()
		m, _ := in.waitFor(t, status, offline)
		if m.retained {
			t.Error("live will delivered with retained true")
		}
		expectEvent("d1 down")
		// It was retained: a later subscriber sees the device offline.
		late := subscribe(t, tb.Broker, status)
		if got := late.all(); len(got) != 1 || got[0].payload != offline || !got[0].retained {
			t.Errorf("retained status after the will: %+v", got)
		}
	})

	t.Run("clean disconnect sends no will", func(t *testing.T) {
		before := len(in.all())
		c, err := connectCuttable(t, pki, tb.url, "d1", status, offline)
		if err != nil {
			t.Fatal(err)
		}
		expectEvent("d1 up")
		c.Disconnect(100)
		// mochi sends a will before it reports the disconnect, so once
		// "down" is seen, a will would already be in the inbox.
		expectEvent("d1 down")
		if got := in.all()[before:]; len(got) != 0 {
			t.Errorf("messages after a clean disconnect: %+v", got)
		}
	})

	t.Run("takeover suppresses the old will", func(t *testing.T) {
		before := len(in.all())
		old, err := connectCuttable(t, pki, tb.url, "d1", status, offline)
		if err != nil {
			t.Fatal(err)
		}
		expectEvent("d1 up")
		old.mu.Lock()
		oldRemote := old.conn.LocalAddr().String()
		old.mu.Unlock()
		fresh, err := connectCuttable(t, pki, tb.url, "d1", status, offline)
		if err != nil {
			t.Fatal(err)
		}
		expectEvent("d1 up")
		// mochi logs this once the old connection's will is sent or
		// dropped. (It is dropped without a word, rather than suppressed,
		// when the takeover closes the connection before its read loop
		// starts: mochi then takes it for a clean disconnect.)
		tb.log.waitFor(t, "client disconnected", "remote="+oldRemote)
		fresh.Publish(status, 1, true, online).Wait()
		in.waitFor(t, status, online)
		for _, m := range in.all()[before:] {
			if m.payload == offline {
				t.Errorf("old connection's will delivered after takeover: %+v", m)
			}
		}
		select {
		case e := <-events:
			t.Errorf("OnClient reported %q for the replaced connection", e)
		default:
		}
		// The new connection's will still works.
		fresh.cut()
		in.waitFor(t, status, offline)
		expectEvent("d1 down")
	})
}
