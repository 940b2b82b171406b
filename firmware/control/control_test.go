package control

import (
	"errors"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/protocol"
)

// testConfig has short, distinct times so each rule shows in a table:
// interval 10s, heat min_on 2m/min_off 2m/max_run 30m, cool min_on
// 3m/min_off 4m/max_run 30m, sensor timeout 30s, band 1 °C.
func testConfig() Config {
	return Config{
		Interval:      10 * time.Second,
		BandC:         1,
		AutoDeadbandC: 2,
		Heat:          OutputConfig{MinOn: 2 * time.Minute, MinOff: 2 * time.Minute, MaxRun: 30 * time.Minute},
		Cool:          OutputConfig{MinOn: 3 * time.Minute, MinOff: 4 * time.Minute, MaxRun: 30 * time.Minute},
		SensorTimeout: 30 * time.Second,
		ButtonWindow:  2 * time.Second,
	}
}

var (
	off     = hal.Outputs{}
	heating = hal.Outputs{Heat: true}
	cooling = hal.Outputs{Cool: true, Fan: true}
)

// step: at t0+at, with the sensor reading c (or failing with err),
// optionally after new settings, the outputs must be want and sensor_ok ok.
type step struct {
	at   time.Duration
	c    float64
	err  error
	set  *Settings
	want hal.Outputs
	ok   bool
}

func sec(n int) time.Duration  { return time.Duration(n) * time.Second }
func mins(n int) time.Duration { return time.Duration(n) * time.Minute }

var errUnplugged = errors.New("i2c: no ACK (sensor unplugged?)")

func TestLoopRules(t *testing.T) {
	heat20 := Settings{SetpointC: 20, Mode: protocol.ModeHeat}
	cool24 := Settings{SetpointC: 24, Mode: protocol.ModeCool}
	auto21 := Settings{SetpointC: 21, Mode: protocol.ModeAuto}
	off20 := Settings{SetpointC: 20, Mode: protocol.ModeOff}
	noFrost := func(c Config) Config { f := false; c.Frost.Enabled = &f; return c }
	fanWithHeat := func(c Config) Config { c.FanWithHeat = true; return c }
	same := func(c Config) Config { return c }

	tests := []struct {
		name  string
		cfg   func(Config) Config
		start Settings
		steps []step
	}{
		{"heat hysteresis waits min_off from start", same, heat20, []step{
			{at: 0, c: 18, want: off, ok: true},              // min_off counts from start
			{at: sec(110), c: 18, want: off, ok: true},       // still resting
			{at: sec(120), c: 18, want: heating, ok: true},   // 18 <= 19.5: on
			{at: sec(130), c: 20.4, want: heating, ok: true}, // inside band: keeps
			{at: sec(240), c: 20.5, want: off, ok: true},     // >= 20.5 and min_on done: off
			{at: sec(250), c: 19.6, want: off, ok: true},     // inside band: stays off
			{at: sec(360), c: 19.5, want: heating, ok: true}, // <= 19.5 after min_off: on
		}},
		{"heat min_on keeps the heater on past the band", same, heat20, []step{
			{at: sec(120), c: 18, want: heating, ok: true},
			{at: sec(130), c: 22, want: heating, ok: true}, // too warm, but on for only 10s
			{at: sec(230), c: 22, want: heating, ok: true}, // 110s
			{at: sec(240), c: 22, want: off, ok: true},     // 120s: off
		}},
		{"heat min_off keeps the heater off when cold", same, heat20, []step{
			{at: sec(120), c: 18, want: heating, ok: true},
			{at: sec(240), c: 21, want: off, ok: true},
			{at: sec(250), c: 15, want: off, ok: true}, // cold, but off for only 10s
			{at: sec(350), c: 15, want: off, ok: true},
			{at: sec(360), c: 15, want: heating, ok: true},
		}},
		{"cool hysteresis with its own min times", same, cool24, []step{
			{at: sec(230), c: 26, want: off, ok: true},       // cool min_off 4m from start
			{at: sec(240), c: 26, want: cooling, ok: true},   // >= 24.5
			{at: sec(300), c: 23, want: cooling, ok: true},   // min_on 3m
			{at: sec(420), c: 23.6, want: cooling, ok: true}, // inside band, keeps
			{at: sec(430), c: 23.5, want: off, ok: true},     // <= 23.5: off
			{at: sec(500), c: 26, want: off, ok: true},       // min_off
			{at: sec(670), c: 26, want: cooling, ok: true},   // 4m after 430
		}},
		{"auto heats and cools around a deadband", same, auto21, []step{
			{at: sec(240), c: 21.9, want: off, ok: true},     // between 20.5 and 22.5: nothing
			{at: sec(250), c: 22.5, want: cooling, ok: true}, // cool target 22, on at 22.5
			{at: sec(430), c: 21.5, want: off, ok: true},     // off at 21.5
			{at: sec(440), c: 20.6, want: off, ok: true},     // above heat on 19.5
			{at: sec(450), c: 19.5, want: heating, ok: true}, // heat target 20, on at 19.5
			{at: sec(570), c: 20.5, want: off, ok: true},     // off at 20.5
		}},
		{"off keeps everything off", same, off20, []step{
			{at: mins(5), c: 10, want: off, ok: true},
			{at: mins(10), c: 35, want: off, ok: true},
		}},
		{"frost protection heats in off mode at 5 °C", same, off20, []step{
			{at: sec(120), c: 5.1, want: off, ok: true},
			{at: sec(130), c: 5.0, want: heating, ok: true}, // <= floor
			{at: sec(250), c: 5.9, want: heating, ok: true}, // until floor+band
			{at: sec(260), c: 6.0, want: off, ok: true},
		}},
		{"frost protection can be switched off", noFrost, off20, []step{
			{at: mins(5), c: 2, want: off, ok: true},
		}},
		{"frost protection overrides cool mode", same, cool24, []step{
			{at: sec(120), c: 4, want: heating, ok: true},
		}},
		{"sensor failure: outputs off after the timeout, resumes after", same, heat20, []step{
			{at: sec(120), c: 18, want: heating, ok: true},
			{at: sec(130), err: errUnplugged, want: heating, ok: true}, // one bad read is tolerated
			{at: sec(150), err: errUnplugged, want: heating, ok: true}, // 30s since last valid
			{at: sec(160), err: errUnplugged, want: off, ok: false},    // 40s: off, even within min_on
			{at: sec(300), err: errUnplugged, want: off, ok: false},
			{at: sec(310), c: 18, want: heating, ok: true}, // valid again, min_off long passed
		}},
		{"no valid reading ever: off and not ok", same, heat20, []step{
			{at: 0, err: errUnplugged, want: off, ok: false},
			{at: mins(5), err: errUnplugged, want: off, ok: false},
			{at: mins(5) + sec(10), c: 18, want: heating, ok: true},
		}},
		{"maximum run time rests the heater", same, heat20, []step{
			{at: sec(120), c: 10, want: heating, ok: true},
			{at: sec(120) + mins(29), c: 10, want: heating, ok: true},
			{at: sec(120) + mins(30), c: 10, want: off, ok: true}, // ran 30m
			{at: sec(120) + mins(31), c: 10, want: off, ok: true}, // rests min_off
			{at: sec(120) + mins(32), c: 10, want: heating, ok: true},
		}},
		{"mode off switches a heater off at once despite min_on", same, heat20, []step{
			{at: sec(120), c: 18, want: heating, ok: true},
			{at: sec(130), c: 18, set: &off20, want: off, ok: true},
		}},
		{"heat to cool: heat off at once, cool after its min_off", same, heat20, []step{
			{at: sec(120), c: 18, want: heating, ok: true},
			{at: sec(130), c: 30, set: &cool24, want: off, ok: true},
			{at: sec(240), c: 30, want: cooling, ok: true}, // cool was off since start (4m)
		}},
		{"cool to heat while cooling never overlaps", same, cool24, []step{
			{at: sec(240), c: 26, want: cooling, ok: true},
			{at: sec(250), c: 15, set: &heat20, want: heating, ok: true}, // cool off and heat on in one switch
		}},
		{"fan runs with heat when configured", fanWithHeat, heat20, []step{
			{at: sec(120), c: 18, want: hal.Outputs{Heat: true, Fan: true}, ok: true},
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, tc.cfg(testConfig()), tc.start, 20)
			first := tc.steps[0]
			h.sensor.set(first.c, first.err)
			if first.set != nil {
				t.Fatal("first step cannot change settings")
			}
			h.start()
			for i, s := range tc.steps {
				if i > 0 || s.at > 0 {
					if s.set != nil {
						h.set(*s.set)
					}
					h.sensor.set(s.c, s.err)
					h.at(s.at)
				}
				snap := h.loop.Snapshot()
				if snap.Outputs != s.want || h.board.outputs() != s.want || snap.SensorOK != s.ok {
					t.Fatalf("step %d at +%v (%.1f °C, err %v): outputs %v (board %v) sensor_ok %v; want %v sensor_ok %v",
						i, s.at, s.c, s.err, snap.Outputs, h.board.outputs(), snap.SensorOK, s.want, s.ok)
				}
			}
			if err := h.stop(); err != nil {
				t.Fatalf("Run: %v", err)
			}
			if got := h.board.outputs(); got != off {
				t.Fatalf("after stop outputs %v, want all off", got)
			}
		})
	}
}
