package control

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"periph.io/x/conn/v3/physic"
)

var t0 = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

// fakeSensor returns whatever the test set.
type fakeSensor struct {
	name string
	mu   sync.Mutex
	c    float64
	err  error
	hum  float64
	pan  bool
	clk  hal.Clock
}

func (s *fakeSensor) Name() string { return s.name }
func (s *fakeSensor) Read() hal.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pan {
		panic("sensor driver bug")
	}
	r := hal.Reading{Sensor: s.name, Time: s.clk.Now()}
	if s.err != nil {
		r.Err = s.err
		return r
	}
	r.Temperature = hal.Celsius(s.c)
	if s.hum > 0 {
		r.HasHumidity = true
		r.Humidity = physic.RelativeHumidity(s.hum * float64(physic.PercentRH))
	}
	return r
}

func (s *fakeSensor) set(c float64, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.c, s.err = c, err
}

// fakeBoard records every SetOutputs and fails the test at once if heat
// and cool are ever asked together.
type fakeBoard struct {
	t       *testing.T
	sensors []hal.Sensor
	buttons chan hal.ButtonEvent

	mu      sync.Mutex
	out     hal.Outputs
	calls   []hal.Outputs
	failN   int // fail this many upcoming SetOutputs calls
	failAll bool
	wired   hal.Outputs
}

func newFakeBoard(t *testing.T, clk hal.Clock, sensors ...*fakeSensor) *fakeBoard {
	b := &fakeBoard{t: t, buttons: make(chan hal.ButtonEvent, 16), out: hal.Outputs{Heat: true, Fan: true}, wired: hal.Outputs{Heat: true, Cool: true, Fan: true}}
	for _, s := range sensors {
		s.clk = clk
		b.sensors = append(b.sensors, s)
	}
	return b
}

func (b *fakeBoard) Sensors() []hal.Sensor           { return b.sensors }
func (b *fakeBoard) Buttons() <-chan hal.ButtonEvent { return b.buttons }
func (b *fakeBoard) Close() error                    { return nil }
func (b *fakeBoard) Wired() hal.Outputs              { return b.wired }
func (b *fakeBoard) SetOutputs(o hal.Outputs) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if o.Heat && o.Cool {
		b.t.Errorf("SetOutputs(%v): heat and cool together", o)
	}
	b.calls = append(b.calls, o)
	if b.failAll || b.failN > 0 {
		b.failN--
		return errors.New("relay bus error")
	}
	b.out = o
	return nil
}

func (b *fakeBoard) outputs() hal.Outputs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.out
}

// harness runs a Loop on a fake clock; every step waits until the loop
// has finished reacting, so assertions never race and nothing sleeps.
type harness struct {
	t      *testing.T
	clk    *haltest.Clock
	sensor *fakeSensor
	board  *fakeBoard
	loop   *Loop
	cancel context.CancelFunc
	done   chan error

	mu      sync.Mutex
	changes []Snapshot
	locals  []Settings
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHarness(t *testing.T, cfg Config, s Settings, startC float64) *harness {
	t.Helper()
	h := &harness{t: t, clk: haltest.NewClock(t0), sensor: &fakeSensor{name: "room", c: startC}}
	h.board = newFakeBoard(t, h.clk, h.sensor)
	var err error
	h.loop, err = New(cfg, h.board, WithClock(h.clk), WithLogger(quietLogger()), WithSettings(s))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// The harness stands in for the agent: it records what the buttons
	// ask for and gives it back to the loop, as the agent does once the
	// change is saved.
	h.loop.Notify(
		func(s Snapshot) { h.mu.Lock(); h.changes = append(h.changes, s); h.mu.Unlock() },
		func(s Settings) {
			h.mu.Lock()
			h.locals = append(h.locals, s)
			h.mu.Unlock()
			if err := h.loop.SetSettings(s); err != nil {
				t.Errorf("SetSettings(%v) from the buttons: %v", s, err)
			}
		})
	return h
}

func (h *harness) start() {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel, h.done = cancel, make(chan error, 1)
	go func() { h.done <- h.loop.Run(ctx) }()
	if !h.clk.WaitPending(1, 5*time.Second) {
		h.t.Fatal("loop did not start")
	}
	h.t.Cleanup(func() { h.stop() })
}

// stop cancels Run and returns its error.
func (h *harness) stop() error {
	if h.cancel == nil {
		return nil
	}
	h.cancel()
	h.cancel = nil
	select {
	case err := <-h.done:
		return err
	case <-time.After(5 * time.Second):
		h.t.Fatal("Run did not return after cancel")
	}
	return nil
}

// settle waits until the loop finished an iteration begun after n0 and is
// waiting on the clock again.
func (h *harness) settle(n0 uint64) {
	h.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if h.loop.Snapshot().Iterations > n0 && h.clk.Pending() == 1 {
			return
		}
		h.clk.WaitPending(1, 10*time.Millisecond)
	}
	h.t.Fatalf("loop did not settle (iterations %d, pending timers %d)", h.loop.Snapshot().Iterations, h.clk.Pending())
}

// at moves the fake time to t0+off (firing the loop's timer) and waits
// for the loop to react.
func (h *harness) at(off time.Duration) {
	h.t.Helper()
	n0 := h.loop.Snapshot().Iterations
	target := t0.Add(off)
	if dl, ok := h.clk.NextDeadline(); !ok || target.Before(dl) {
		h.t.Fatalf("step to +%v fires no timer (next deadline +%v); steps must be at least one interval apart", off, dl.Sub(t0))
	}
	h.clk.Set(target)
	h.settle(n0)
}

func (h *harness) set(s Settings) {
	h.t.Helper()
	n0 := h.loop.Snapshot().Iterations
	if err := h.loop.SetSettings(s); err != nil {
		h.t.Fatal(err)
	}
	h.settle(n0)
}

func (h *harness) press(b hal.Button) {
	h.t.Helper()
	n0 := h.loop.Snapshot().Iterations
	h.board.buttons <- hal.ButtonEvent{Button: b, Time: h.clk.Now()}
	h.settle(n0)
}

func (h *harness) localChanges() []Settings {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Settings(nil), h.locals...)
}

func (h *harness) outputChanges() []Snapshot {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]Snapshot(nil), h.changes...)
}
