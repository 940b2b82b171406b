package control

import (
	"context"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/protocol"
)

// TestSimulatedRoomCycles closes the loop over the simulated room: over
// six simulated hours the heater (then the air conditioner) cycles several
// times and the room stays around the setpoint.
func TestSimulatedRoomCycles(t *testing.T) {
	tests := []struct {
		name      string
		opts      sim.Options
		settings  Settings
		relay     func(hal.Outputs) bool
		minCycles int
	}{
		{"heating", sim.Options{InitialC: 16, OutsideC: 5}, Settings{21, protocol.ModeHeat}, func(o hal.Outputs) bool { return o.Heat }, 3},
		{"cooling", sim.Options{InitialC: 28, OutsideC: 32}, Settings{24, protocol.ModeCool}, func(o hal.Outputs) bool { return o.Cool }, 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			clk := haltest.NewClock(t0)
			tc.opts.Clock = clk
			room, err := sim.New(tc.opts)
			if err != nil {
				t.Fatal(err)
			}
			cfg := DefaultConfig()
			cfg.Interval = 30 * time.Second
			cfg.SensorTimeout = 2 * time.Minute
			l, err := New(cfg, room, WithClock(clk), WithLogger(quietLogger()), WithSettings(tc.settings))
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() { done <- l.Run(ctx) }()
			if !clk.WaitPending(1, 5*time.Second) {
				t.Fatal("loop did not start")
			}
			h := &harness{t: t, clk: clk, loop: l}
			lo, hi := 100.0, -100.0
			for i := 1; i <= 6*120; i++ {
				h.at(time.Duration(i) * cfg.Interval)
				if i > 240 { // after two hours, it must hold the band
					c := room.TemperatureC()
					lo, hi = min(lo, c), max(hi, c)
				}
			}
			cancel()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			on := 0
			for _, o := range room.History() {
				if tc.relay(o) {
					on++
				}
			}
			if on < tc.minCycles {
				t.Fatalf("%d on cycles in 6h, want at least %d; history %v", on, tc.minCycles, room.History())
			}
			sp := tc.settings.SetpointC
			if lo < sp-1.5 || hi > sp+1.5 {
				t.Fatalf("room ranged %.2f..%.2f °C, want within 1.5 of %v", lo, hi, sp)
			}
			if room.Outputs() != (hal.Outputs{}) {
				t.Fatalf("outputs %v after stop", room.Outputs())
			}
			t.Logf("%d cycles, room %.2f..%.2f °C", on, lo, hi)
		})
	}
}
