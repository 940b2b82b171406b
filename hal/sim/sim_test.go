package sim

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
)

var t0 = time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)

func read(t *testing.T, b *Board) float64 {
	t.Helper()
	r, err := readErr(b.Sensors()[0])
	if err != nil || !r.OK() {
		t.Fatalf("Read = %+v, %v", r, err)
	}
	return r.Temperature.Celsius()
}

func TestRoomModel(t *testing.T) {
	// Defaults: 18 °C inside, 10 outside, tau 2h, heater and cooler 10 °C/h.
	// Exact solution: T(t) = Teq + (T0-Teq)·e^(-t/tau).
	expect := func(t0c, eq, hours float64) float64 {
		return eq + (t0c-eq)*math.Exp(-hours/2)
	}
	tests := []struct {
		name string
		out  hal.Outputs
		eq   float64
	}{
		{"drifts toward outside", hal.Outputs{}, 10},
		{"heat warms toward 10+10*2", hal.Outputs{Heat: true}, 30},
		{"cool cools toward 10-10*2", hal.Outputs{Cool: true}, -10},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := haltest.NewClock(t0)
			b, err := New(Options{Clock: clk})
			if err != nil {
				t.Fatal(err)
			}
			if err := b.SetOutputs(tc.out); err != nil {
				t.Fatal(err)
			}
			// Reading often or once must not matter.
			for i := 0; i < 60; i++ {
				clk.Advance(time.Minute)
				read(t, b)
			}
			got := read(t, b)
			if want := expect(18, tc.eq, 1); math.Abs(got-want) > 0.006 {
				t.Fatalf("after 1h: %.3f °C, want %.3f", got, want)
			}
		})
	}
}

func TestRefusesHeatAndCool(t *testing.T) {
	b, err := New(Options{Clock: haltest.NewClock(t0)})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.SetOutputs(hal.Outputs{Heat: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.SetOutputs(hal.Outputs{Heat: true, Cool: true}); !errors.Is(err, hal.ErrHeatAndCool) {
		t.Fatalf("SetOutputs(heat+cool) = %v", err)
	}
	if got := b.Outputs(); got != (hal.Outputs{}) {
		t.Fatalf("outputs %v, want all off", got)
	}
}

func TestFaultPressAndClose(t *testing.T) {
	clk := haltest.NewClock(t0)
	b, err := New(Options{Clock: clk, HumidityPct: 40, Fan: true})
	if err != nil {
		t.Fatal(err)
	}
	r, _ := readErr(b.Sensors()[0])
	if !r.HasHumidity || r.Humidity.String() != "40%rH" || r.Sensor != "room" {
		t.Fatalf("reading %+v", r)
	}
	b.SetSensorFault(errors.New("unplugged"))
	if r, err := readErr(b.Sensors()[0]); err == nil || r.OK() {
		t.Fatalf("Read with fault = %+v, %v", r, err)
	}
	b.SetSensorFault(nil)
	read(t, b)
	if !b.Press(hal.ButtonUp) {
		t.Fatal("Press refused")
	}
	if ev := <-b.Buttons(); ev.Button != hal.ButtonUp || !ev.Time.Equal(t0) {
		t.Fatalf("event %+v", ev)
	}
	if err := b.SetOutputs(hal.Outputs{Cool: true, Fan: true}); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if got := b.Outputs(); got != (hal.Outputs{}) {
		t.Fatalf("outputs after Close %v", got)
	}
	if _, ok := <-b.Buttons(); ok {
		t.Fatal("button channel open after Close")
	}
	if err := b.SetOutputs(hal.Outputs{Heat: true}); !errors.Is(err, ErrClosed) {
		t.Fatalf("SetOutputs after Close = %v", err)
	}
	want := []hal.Outputs{{Cool: true, Fan: true}, {}}
	if h := b.History(); len(h) != 2 || h[0] != want[0] || h[1] != want[1] {
		t.Fatalf("history %v, want %v", h, want)
	}
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []Options{{Speed: -1}, {Speed: math.NaN()}, {HumidityPct: 101}, {TimeConstant: -time.Second}} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) = nil error", o)
		}
	}
}

func TestScaledClock(t *testing.T) {
	clk := ScaledClock(1000)
	start := clk.Now()
	tm := clk.NewTimer(2 * time.Second) // 2 ms of real time
	select {
	case <-tm.C():
	case <-time.After(5 * time.Second):
		t.Fatal("scaled timer did not fire")
	}
	if el := clk.Now().Sub(start); el < 2*time.Second {
		t.Fatalf("scaled clock advanced %v after a 2s timer", el)
	}
	b, err := New(Options{Speed: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := b.Clock().(*scaledClock); !ok {
		t.Fatalf("Speed 1000 gave clock %T", b.Clock())
	}
}
