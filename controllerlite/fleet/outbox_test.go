package fleet

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// heldPub is a broker link that holds every publish until released, as a
// broker busy with a returning fleet's handshakes does, and records what
// it took, in order.
type heldPub struct {
	release chan struct{}
	mu      sync.Mutex
	took    []protocol.Message
	topics  []string
	started int
}

func (p *heldPub) Publish(ctx context.Context, topic string, payload []byte, _ byte, _ bool) error {
	p.mu.Lock()
	p.started++
	p.mu.Unlock()
	select {
	case <-p.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	m, _, err := protocol.DecodeMessage(payload)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.took = append(p.took, m)
	p.topics = append(p.topics, topic)
	return nil
}

func (p *heldPub) inFlight() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.started - len(p.took)
}

func (p *heldPub) taken() ([]string, []protocol.Message) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.topics...), append([]protocol.Message(nil), p.took...)
}

// TestEventsNotHeldByPublishes: while the broker has not acknowledged a
// Command, the fleet still takes other devices' Events and shows them; the
// device's later writes wait behind its Command in flight and only the
// newest of them goes out after it (it carries the others), so the broker
// retains the newest; each write's caller is answered once the broker has
// taken it.
func TestEventsNotHeldByPublishes(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pub := &heldPub{release: make(chan struct{})}
	f, stop := startFleet(t, st, pub, nil)
	f.Receive(topic("d1", protocol.KindEvent), eventPayload(t, 1, 20), false)
	f.Receive(topic("d1", protocol.KindStatus), protocol.Status{Online: true}.Encode(), false)
	testenv.WaitFor(t, "d1's greeting in flight", func() bool { return pub.inFlight() == 1 })

	f.Receive(topic("d2", protocol.KindEvent), eventPayload(t, 1, 23), false)
	testenv.WaitFor(t, "d2's Event shown while d1's greeting is in flight", func() bool {
		d, ok := f.Device("d2")
		return ok && setpoint(d.Props) == 23
	})

	type answer struct {
		d   Device
		err error
	}
	answers := make(chan answer, 2)
	for i, sp := range []float64{21, 22} {
		go func() {
			d, err := f.Set(context.Background(), "d1", map[string]any{"setpoint_c": sp})
			answers <- answer{d, err}
		}()
		// The second write is made once the first is stored, so their
		// order is known.
		testenv.WaitFor(t, fmt.Sprintf("write %d stored", i+1), func() bool {
			d, _ := f.Device("d1")
			return setpoint(d.Props) == sp && d.Pending
		})
	}
	if n := pub.inFlight(); n != 1 {
		t.Fatalf("%d publishes in flight for d1, want 1: a device's Commands go one at a time", n)
	}
	select {
	case a := <-answers:
		t.Fatalf("write answered before the broker took it: %+v, %v", a.d, a.err)
	default:
	}
	newest, _ := f.Device("d1")
	close(pub.release)
	for range 2 {
		a := <-answers
		if a.err != nil || a.d.Pending {
			t.Fatalf("write answered %+v, %v: want taken by the broker", a.d, a.err)
		}
	}
	topics, took := pub.taken()
	if len(took) != 2 || topics[0] != topic("d1", protocol.KindCmd) || topics[1] != topics[0] {
		t.Fatalf("published %v, want d1's greeting and then its newest Command only", topics)
	}
	if took[1].VC != newest.VC || setpoint(took[1].Props) != 22 || took[0].VC.Compare(took[1].VC) != protocol.Before {
		t.Fatalf("published clocks %v then %v (setpoint %v), want the greeting, then the newest state %v", took[0].VC, took[1].VC, setpoint(took[1].Props), newest.VC)
	}
	stop()
	devs, err := st.Load()
	if err != nil {
		t.Fatal(err)
	}
	for _, d := range devs {
		if d.Owed {
			t.Errorf("%s stored as owed after the broker took its newest Command", d.ID)
		}
	}
}
