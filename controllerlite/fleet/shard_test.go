package fleet

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/controllerlite/store/pgstore"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// gatedStore is a PostgreSQL store whose next PutBased can be held at the
// door: the test lets another instance write in between.
type gatedStore struct {
	*pgstore.Store
	mu      sync.Mutex
	gate    chan struct{}
	entered chan struct{}
}

// hold makes the next PutBased wait: entered is closed when it has come,
// and release lets it through.
func (g *gatedStore) hold() (entered <-chan struct{}, release func()) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate, g.entered = make(chan struct{}), make(chan struct{})
	gate := g.gate
	return g.entered, func() { close(gate) }
}

func (g *gatedStore) PutBased(base map[string]uint64, devs ...store.Device) error {
	g.mu.Lock()
	gate, entered := g.gate, g.entered
	g.gate, g.entered = nil, nil
	g.mu.Unlock()
	if gate != nil {
		close(entered)
		<-gate
	}
	return g.Store.PutBased(base, devs...)
}

// sent records what a fleet publishes.
type sent struct {
	mu   sync.Mutex
	msgs []protocol.Message
}

func (s *sent) Publish(_ context.Context, topic string, payload []byte, _ byte, _ bool) error {
	m, _, err := protocol.DecodeMessage(payload)
	if err != nil {
		return fmt.Errorf("%s: %w", topic, err)
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	s.mu.Unlock()
	return nil
}

func (s *sent) find(cond func(protocol.Message) bool) (protocol.Message, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, m := range s.msgs {
		if cond(m) {
			return m, true
		}
	}
	return protocol.Message{}, false
}

type nopSubscriber struct{}

func (nopSubscriber) Subscribe(string, byte) error { return nil }
func (nopSubscriber) Unsubscribe(string) error     { return nil }

// startShared runs a fleet as instance self of live on st, linked to a
// recording publisher, and stops it when the test ends.
func startShared(t *testing.T, st SharedStore, self string, live []string) (*Fleet, *sent) {
	t.Helper()
	log, _ := newLogger(t)
	f, err := New(Options{Store: st, Logger: log.With("instance", self), FlushInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Share(nopSubscriber{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	f.SetView(lease.View{Self: self, Active: true, Live: live})
	pub := &sent{}
	f.LinkUp(pub, true)
	return f, pub
}

// TestOwnerKeepsAnotherInstancesWrite: the owner of a device takes an
// Event and, before it has stored it, another instance writes the device
// from the stored record. Both count the controller's entry on from the
// same stored value, so the same clock names two states; the owner must
// keep the other's write (and its own Event), not take it for a
// duplicate, and its next Command must carry both beyond the other's.
func TestOwnerKeepsAnotherInstancesWrite(t *testing.T) {
	pg := testenv.StartPostgres(t)
	url := pg.NewDatabase(t)
	open := func() *pgstore.Store {
		st, err := pgstore.Open(context.Background(), url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		return st
	}
	live := []string{"a", "b"}
	id := ""
	for i := 1; id == ""; i++ {
		if c := fmt.Sprintf("d%d", i); lease.Owner(c, live) == "a" {
			id = c
		}
	}
	gated := &gatedStore{Store: open()}
	a, aSent := startShared(t, gated, "a", live)
	b, bSent := startShared(t, open(), "b", live)
	ctx := context.Background()

	dev := protocol.NewReplica(protocol.DeviceSide)
	event := func(changes map[string]any) protocol.Message {
		m, err := dev.WriteAndSend(changes, protocol.SrcLocal)
		if err != nil {
			t.Fatal(err)
		}
		payload, err := m.Encode()
		if err != nil {
			t.Fatal(err)
		}
		a.Receive(topic(id, protocol.KindEvent), payload, false)
		return m
	}
	first := event(map[string]any{protocol.PropMode: protocol.ModeHeat})
	testenv.Eventually(t, waitTimeout, "b to read the owner's stored record", func() (bool, string) {
		b.Refresh()
		d, ok := b.Device(id)
		return ok && d.VC[1] >= first.VC[1], fmt.Sprint(d.VC)
	})

	entered, release := gated.hold()
	second := event(map[string]any{protocol.PropMode: protocol.ModeCool})
	select {
	case <-entered:
	case <-time.After(waitTimeout):
		t.Fatal("the owner did not try to store the event")
	}
	w, err := b.Set(ctx, id, map[string]any{protocol.PropSetpoint: 21.5})
	if err != nil {
		t.Fatal(err)
	}
	cmd, ok := bSent.find(func(m protocol.Message) bool { return m.VC == w.VC })
	if !ok {
		t.Fatal("b did not publish its write")
	}
	payload, err := cmd.Encode()
	if err != nil {
		t.Fatal(err)
	}
	a.Receive(topic(id, protocol.KindCmd), payload, false) // the broker hands it to the owner
	release()

	want := func(p protocol.Props) bool {
		sp := p[protocol.PropSetpoint]
		return sp.Val == 21.5 && sp.W == w.VC && mode(p) == protocol.ModeCool
	}
	testenv.Eventually(t, waitTimeout, "the owner to hold both the other's write and its device's event", func() (bool, string) {
		d, _ := a.Device(id)
		return want(d.Props) && d.VC[1] >= second.VC[1], fmt.Sprint(d.VC, d.Props)
	})
	check := open()
	testenv.Eventually(t, waitTimeout, "the stored record to hold both", func() (bool, string) {
		row, ok, err := check.Get(id)
		if err != nil || !ok {
			return false, fmt.Sprint(ok, err)
		}
		return want(row.Replica.Props), fmt.Sprint(row.Replica.VC, row.Replica.Props)
	})

	// The device comes online: the owner's greeting carries both, after
	// the other's write, and the device takes it.
	a.Receive(topic(id, protocol.KindStatus), protocol.Status{Online: true}.Encode(), false)
	var greet protocol.Message
	testenv.Eventually(t, waitTimeout, "the owner's greeting", func() (bool, string) {
		greet, ok = aSent.find(func(m protocol.Message) bool { return w.VC.LessEq(m.VC) && m.VC != w.VC })
		return ok, ""
	})
	if !want(greet.Props) {
		t.Errorf("greeting %v carries %v", greet.VC, greet.Props)
	}
	if _, err := dev.Receive(cmd); err != nil {
		t.Fatal(err)
	}
	out, err := dev.Receive(greet)
	if err != nil || out.Duplicate {
		t.Errorf("the device takes the greeting as %+v, %v; want it new", out, err)
	}
}
