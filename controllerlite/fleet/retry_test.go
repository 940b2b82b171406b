package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// outageStore is the bbolt store with an outage the test switches on and
// off: while it lasts every Put fails, as PostgreSQL's do while it
// restarts.
type outageStore struct {
	*store.Store
	down  atomic.Bool
	mu    sync.Mutex
	tries []time.Time // Puts refused during the outage
}

func (s *outageStore) refused() []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.tries)
}

var errOutage = errors.New("store out of reach")

func (s *outageStore) Put(devs ...store.Device) error {
	if s.down.Load() {
		s.mu.Lock()
		s.tries = append(s.tries, time.Now())
		s.mu.Unlock()
		return errOutage
	}
	return s.Store.Put(devs...)
}

// TestStoreBackInUseSoon: an Event received while the store refuses
// writes is stored within a fraction of a second of the store's return,
// not at the next flush (an hour here), and the fleet does not hammer a
// store that stays away.
func TestStoreBackInUseSoon(t *testing.T) {
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	os := &outageStore{Store: st}
	log, _ := newLogger(t)
	f, err := New(Options{Store: os, Logger: log, FlushInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	f.LinkUp(&sent{}, true)
	<-f.Ready()

	os.down.Store(true)
	dev := protocol.NewReplica(protocol.DeviceSide)
	m, err := dev.WriteAndSend(map[string]any{protocol.PropSetpoint: 19.5}, protocol.SrcLocal)
	if err != nil {
		t.Fatal(err)
	}
	payload, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	f.Receive(topic("d1", protocol.KindEvent), payload, false)
	// Tried again after 250 ms, 500 ms, 1 s: backing off, not a write
	// per turn of the loop.
	testenv.Eventually(t, waitTimeout, "the store to be tried again during the outage", func() (bool, string) {
		return len(os.refused()) >= 4, fmt.Sprint(len(os.refused()), " tries")
	})
	tries := os.refused()
	if spread := tries[3].Sub(tries[0]); spread < 1500*time.Millisecond {
		t.Errorf("four tries within %v: the retry does not back off (want 250 ms, 500 ms, 1 s apart)", spread)
	}
	os.down.Store(false)
	back := time.Now()
	testenv.Eventually(t, waitTimeout, "the event stored after the store's return", func() (bool, string) {
		devs, err := st.Load()
		return err == nil && len(devs) == 1 && devs[0].Replica.VC[1] == m.VC[1], ""
	})
	// The next try was due 2 s after the fourth (4 s if a fifth came
	// before the store was back): well within the flush interval (1 h).
	if took := time.Since(back); took > 8*time.Second {
		t.Errorf("stored %v after the store came back: want within the backoff's next wait (2-4 s), not the flush interval (1 h)", took)
	}
}
