package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// recordPub records what the fleet publishes; the broker acknowledges at once.
type recordPub struct {
	mu     sync.Mutex
	topics []string
	fail   error
}

func (p *recordPub) Publish(_ context.Context, topic string, _ []byte, _ byte, _ bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.fail != nil {
		return p.fail
	}
	p.topics = append(p.topics, topic)
	return nil
}

func (p *recordPub) published() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.topics...)
}

// startFleet runs a fleet on st, linked to p; stop ends its loop and waits
// for it (idempotent).
func startFleet(t *testing.T, st *store.Store, p Publisher) (f *Fleet, stop func()) {
	t.Helper()
	var err error
	f, err = New(Options{Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	t.Cleanup(stop)
	f.LinkUp(p, true)
	<-f.Ready()
	return f, stop
}

func event(t *testing.T, n uint64, sp float64) []byte {
	t.Helper()
	b, err := protocol.Message{VC: protocol.Clock{0, n}, Src: protocol.SrcLocal,
		Props: protocol.Props{protocol.PropSetpoint: {Val: sp, W: protocol.Clock{0, n}}}}.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestBatchStoredBeforePublished: a burst of devices coming back is
// applied, stored and greeted; every greeting goes out after its device's
// state is on disk, and a reopened store holds each device's Event.
func TestBatchStoredBeforePublished(t *testing.T) {
	dir := t.TempDir()
	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	pub := &recordPub{}
	f, stop := startFleet(t, st, pub)
	const n = 20
	for i := range n {
		id := fmt.Sprintf("d%02d", i)
		f.Receive(protocol.Topic(protocol.DefaultRoot, id, protocol.KindEvent), event(t, 3, 19+float64(i)/10), false)
		f.Receive(protocol.Topic(protocol.DefaultRoot, id, protocol.KindStatus), protocol.Status{Online: true}.Encode(), false)
	}
	waitUntil(t, "every greeting published", func() bool { return len(pub.published()) == n })
	for i, topic := range pub.published() {
		if want := protocol.Topic(protocol.DefaultRoot, fmt.Sprintf("d%02d", i), protocol.KindCmd); topic != want {
			t.Fatalf("greeting %d on %s, want %s: out of order", i, topic, want)
		}
	}
	stop() // the owed marks are cleared after the publishes
	devs, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(devs) != n {
		t.Fatalf("%d records stored, want %d", len(devs), n)
	}
	for i, d := range devs {
		if d.Replica.VC[1] != 3 || d.Owed {
			t.Errorf("%s: stored clock %v owed %v, want the Event's device counter 3 and nothing owed", d.ID, d.Replica.VC, d.Owed)
		}
		if sp, _ := d.Replica.Props.Setpoint(); sp != 19+float64(i)/10 {
			t.Errorf("%s: stored setpoint %v", d.ID, sp)
		}
	}
}

// fleetWithDevice starts a fleet on a fresh store that knows device d1.
func fleetWithDevice(t *testing.T) (*Fleet, *store.Store, *recordPub, func()) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub := &recordPub{}
	f, stop := startFleet(t, st, pub)
	f.Receive(protocol.Topic(protocol.DefaultRoot, "d1", protocol.KindEvent), event(t, 1, 20), false)
	waitUntil(t, "the device known", func() bool { _, ok := f.Device("d1"); return ok })
	return f, st, pub, stop
}

// TestNothingPublishedWhenStoreRefuses: a remote write whose state cannot
// be stored is refused with the reason and never published.
func TestNothingPublishedWhenStoreRefuses(t *testing.T) {
	f, st, pub, _ := fleetWithDevice(t)
	if _, err := f.Set(context.Background(), "d1", map[string]any{"setpoint_c": 22.0}); err != nil {
		t.Fatal(err)
	}
	if got := len(pub.published()); got != 1 {
		t.Fatalf("%d commands published after a stored write, want 1", got)
	}
	st.Close()
	_, err := f.Set(context.Background(), "d1", map[string]any{"setpoint_c": 23.0})
	if err == nil || !strings.Contains(err.Error(), "persist before publish") {
		t.Fatalf("write with the store gone: %v, want a persist-before-publish error", err)
	}
	if got := len(pub.published()); got != 1 {
		t.Fatalf("%d commands published, want still 1: a command went out without its state stored", got)
	}
}

// TestOwedWhenPublishFails: a Command the broker did not take leaves the
// device owed, and the next successful Command (a whole state) clears it.
func TestOwedWhenPublishFails(t *testing.T) {
	f, st, pub, stop := fleetWithDevice(t)
	pub.mu.Lock()
	pub.fail = errors.New("broker gone")
	pub.mu.Unlock()
	d, err := f.Set(context.Background(), "d1", map[string]any{"setpoint_c": 22.0})
	if err != nil || !d.Pending {
		t.Fatalf("write while the broker refuses: %+v, %v; want accepted and pending", d, err)
	}
	pub.mu.Lock()
	pub.fail = nil
	pub.mu.Unlock()
	d, err = f.Set(context.Background(), "d1", map[string]any{"mode": "heat"})
	if err != nil || d.Pending {
		t.Fatalf("write with the broker back: %+v, %v; want nothing pending", d, err)
	}
	stop()
	devs, err := st.Load()
	if err != nil || len(devs) != 1 || devs[0].Owed {
		t.Fatalf("stored %+v, %v: want d1 with nothing owed", devs, err)
	}
}
