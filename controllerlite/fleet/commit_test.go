package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// eventPayload is a device's Event with device counter n writing setpoint sp.
func eventPayload(tb testing.TB, n uint64, sp float64) []byte {
	tb.Helper()
	b, err := protocol.Message{VC: protocol.Clock{0, n}, Src: protocol.SrcLocal,
		Props: protocol.Props{protocol.PropSetpoint: {Val: sp, W: protocol.Clock{0, n}}}}.Encode()
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// commands records, in order, the topics of the Commands the embedded
// broker delivers to an in-process subscriber.
type commands struct {
	mu     sync.Mutex
	topics []string
}

func (c *commands) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.topics...)
}

// watchCommands subscribes to every device's command topic on e's embedded
// broker.
func watchCommands(t *testing.T, e *env) *commands {
	t.Helper()
	c := &commands{}
	err := e.b.Subscribe(protocol.Filter(protocol.DefaultRoot, protocol.KindCmd), func(topic string, _ []byte, retained bool) {
		if !retained {
			c.mu.Lock()
			c.topics = append(c.topics, topic)
			c.mu.Unlock()
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestBurstStoredAndGreeted: a burst of devices coming back through the
// embedded broker (one batch or a few) is applied, stored and greeted, each
// device once (the greetings go out through the outbox, publishParallel at
// a time, each device's in order); once the fleet has stopped the store
// holds every device's Event and no Command owed.
func TestBurstStoredAndGreeted(t *testing.T) {
	for _, n := range []int{20, 12*publishParallel + 1} {
		t.Run(fmt.Sprint(n), func(t *testing.T) { testBurst(t, n) })
	}
}

func testBurst(t *testing.T, n int) {
	e := newEnv(t, "embedded", nil)
	r := e.start(t.TempDir())
	r.waitReady(t)
	cmds := watchCommands(t, e)
	setpoint := func(i int) float64 { return 19 + float64(i%100)/10 }
	for i := range n {
		id := fmt.Sprintf("d%04d", i)
		if err := e.b.Publish(topic(id, protocol.KindEvent), eventPayload(t, 3, setpoint(i)), true, 1); err != nil {
			t.Fatal(err)
		}
		if err := e.b.Publish(topic(id, protocol.KindStatus), protocol.Status{Online: true}.Encode(), true, 1); err != nil {
			t.Fatal(err)
		}
	}
	testenv.WaitFor(t, "every greeting published", func() bool { return len(cmds.got()) >= n })
	got := cmds.got()
	slices.Sort(got)
	for i, g := range got {
		if want := topic(fmt.Sprintf("d%04d", i), protocol.KindCmd); i >= n || g != want {
			t.Fatalf("%d greetings, the %dth on %s: want one on each of d0000..d%04d", len(got), i, g, n-1)
		}
	}
	r.stop()
	st, err := store.Open(r.dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
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
		if sp, _ := d.Replica.Props.Setpoint(); sp != setpoint(i) {
			t.Errorf("%s: stored setpoint %v", d.ID, sp)
		}
	}
}

// TestNothingPublishedWhenStoreRefuses: a remote write whose state cannot
// be stored is refused with the reason and never published.
func TestNothingPublishedWhenStoreRefuses(t *testing.T) {
	e := newEnv(t, "embedded", nil)
	r := e.start(t.TempDir())
	r.waitReady(t)
	cmds := watchCommands(t, e)
	if err := e.b.Publish(topic("d1", protocol.KindEvent), eventPayload(t, 1, 20), true, 1); err != nil {
		t.Fatal(err)
	}
	r.waitDevice(t, "d1", "known", func(Device) bool { return true })
	if _, err := r.Set(context.Background(), "d1", map[string]any{"setpoint_c": 22.0}); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, "the stored write published", func() bool { return len(cmds.got()) == 1 })
	r.st.Close()
	_, err := r.Set(context.Background(), "d1", map[string]any{"setpoint_c": 23.0})
	if err == nil || !strings.Contains(err.Error(), "persist before publish") {
		t.Fatalf("write with the store gone: %v, want a persist-before-publish error", err)
	}
	// The embedded broker delivers inline, within Publish: had the
	// Command gone out, it would be recorded by now.
	if got := len(cmds.got()); got != 1 {
		t.Fatalf("%d commands published, want still 1: a command went out without its state stored", got)
	}
}

// failingPub is a broker link that refuses publishes while fail is set:
// a publish failing with the link still up cannot be had from a real
// broker on demand.
type failingPub struct {
	mu   sync.Mutex
	fail error
}

func (p *failingPub) Publish(context.Context, string, []byte, byte, bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fail
}

func (p *failingPub) setFail(err error) {
	p.mu.Lock()
	p.fail = err
	p.mu.Unlock()
}

// startFleet runs a fleet on st, linked to p, with edit applied before it
// runs; stop ends its loop and waits for it (idempotent).
func startFleet(tb testing.TB, st *store.Store, p Publisher, edit func(*Fleet)) (f *Fleet, stop func()) {
	tb.Helper()
	f, err := New(Options{Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		tb.Fatal(err)
	}
	if edit != nil {
		edit(f)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	var once sync.Once
	stop = func() { once.Do(func() { cancel(); <-done }) }
	tb.Cleanup(stop)
	f.LinkUp(p, true)
	<-f.Ready()
	return f, stop
}

// TestOwedWhenPublishFails: a Command the broker did not take leaves the
// device owed, and the next successful Command (a whole state) clears it.
func TestOwedWhenPublishFails(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub := &failingPub{}
	f, stop := startFleet(t, st, pub, nil)
	f.Receive(topic("d1", protocol.KindEvent), eventPayload(t, 1, 20), false)
	testenv.WaitFor(t, "the device known", func() bool { _, ok := f.Device("d1"); return ok })
	pub.setFail(errors.New("broker gone"))
	d, err := f.Set(context.Background(), "d1", map[string]any{"setpoint_c": 22.0})
	if err != nil || !d.Pending {
		t.Fatalf("write while the broker refuses: %+v, %v; want accepted and pending", d, err)
	}
	pub.setFail(nil)
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

// countingPub is a broker link that takes every publish and counts them
// by topic.
type countingPub struct {
	mu sync.Mutex
	n  map[string]int
}

func (p *countingPub) Publish(_ context.Context, topic string, _ []byte, _ byte, _ bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.n == nil {
		p.n = map[string]int{}
	}
	p.n[topic]++
	return nil
}

func (p *countingPub) counts() map[string]int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return maps.Clone(p.n)
}

// TestManyOwedDrain: many more owed Commands than the outbox publishes at
// once (publishParallel) all go out when the link is back, each device's
// once, however often the flush looks for owed devices meanwhile.
func TestManyOwedDrain(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	const n = 12*publishParallel + 17
	f, _ := startFleet(t, st, &countingPub{}, func(f *Fleet) { f.opts.FlushInterval = time.Millisecond })
	for i := range n {
		f.Receive(topic(fmt.Sprintf("d%03d", i), protocol.KindEvent), eventPayload(t, 1, 20), false)
	}
	testenv.WaitFor(t, "every device known", func() bool { return f.Status().Devices == n })
	f.LinkDown(errors.New("broker gone"))
	for i := range n {
		if _, err := f.Set(context.Background(), fmt.Sprintf("d%03d", i), map[string]any{"setpoint_c": 22.0}); err != nil {
			t.Fatal(err)
		}
	}
	if owed := f.Status().Owed; owed != n {
		t.Fatalf("%d devices owe a Command with the link down, want %d", owed, n)
	}
	pub := &countingPub{}
	f.LinkUp(pub, true)
	testenv.WaitFor(t, "every owed Command published", func() bool { return f.Status().Owed == 0 })
	got := pub.counts()
	for i := range n {
		c := topic(fmt.Sprintf("d%03d", i), protocol.KindCmd)
		if got[c] != 1 {
			t.Errorf("%s published %d times, want once", c, got[c])
		}
	}
}
