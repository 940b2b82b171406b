package control

import (
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// TestCounts: the loop counts failed reads and relay switches, and times
// an output's run from when it went on until max_run switches it off.
func TestCounts(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	h.start()
	steps := []struct {
		at         time.Duration
		err        error
		heatRun    time.Duration
		switches   uint64
		readErrors uint64
	}{
		{sec(10), nil, 0, 0, 0},                     // resting: min_off counts from start
		{sec(120), nil, 0, 1, 0},                    // on now
		{sec(130), nil, sec(10), 1, 0},              // on for 10 s
		{sec(140), errUnplugged, sec(20), 1, 1},     // a failed read counts; within sensor_timeout the heat stays on
		{sec(150), nil, sec(30), 1, 1},              // the next read is fine
		{mins(32), nil, 0, 2, 1},                    // 30 min on: max_run switches it off to rest
		{mins(32) + sec(10), errUnplugged, 0, 2, 2}, // resting
	}
	for _, s := range steps {
		h.sensor.set(18, s.err)
		h.at(s.at)
		c := h.loop.Counts()
		if len(c.ReadErrors) != 1 || c.ReadErrors[0] != s.readErrors {
			t.Errorf("+%v: read errors %v, want [%d]", s.at, c.ReadErrors, s.readErrors)
		}
		if len(c.Outputs) != 3 {
			t.Fatalf("+%v: outputs %+v, want heat, cool and fan (all wired)", s.at, c.Outputs)
		}
		heat, fan := c.Outputs[0], c.Outputs[2]
		if heat.Name != "heat" || heat.OnFor != s.heatRun || heat.Switches != s.switches || heat.MaxRun != 30*time.Minute {
			t.Errorf("+%v: heat %+v, want on for %v, %d switches, max run 30m", s.at, heat, s.heatRun, s.switches)
		}
		if fan.Name != "fan" || fan.Switches != 0 || fan.MaxRun != 0 {
			t.Errorf("+%v: fan %+v", s.at, fan)
		}
	}
}
