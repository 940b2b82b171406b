package main

import (
	"bytes"
	"context"
	"fmt"
	"os"

	"github.com/thermofleet/thermo/protocol"
	"strings"
	"testing"
)

// TestMain runs the soak's thermostat processes: the soak starts them as
// this program (the test binary here) with SOAK_CHILD set.
func TestMain(m *testing.M) {
	if spec := os.Getenv(childEnv); spec != "" {
		if err := childMain(spec, os.Stdin, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "soak thermostat:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestSoakDays plays three simulated days of four thermostats at 6,000 times
// real time (three broker restarts), the short version of `make soak`,
// and fails on any check the soak makes: an entry missed or late, the
// sides unequal, a relay rule broken, the heap grown.
func TestSoakDays(t *testing.T) {
	if testing.Short() {
		t.Skip("plays three simulated days in about 45 s")
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--days", "3", "--devices", "4", "--speed", "6000"}, &out, &out)
	t.Log(out.String())
	if err != nil || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("soak: %v", err)
	}
}

// TestCheckWrites: the write check finds a lost write and a conflict the
// device lost, and accepts writes replaced by later ones and conflicts the
// device won.
func TestCheckWrites(t *testing.T) {
	sp := expandNames([]string{protocol.PropSetpoint})
	dev := func(c, d uint64) write { return write{src: protocol.SrcButton, names: sp, w: protocol.Clock{c, d}} }
	ctl := func(c, d uint64) write { return write{src: protocol.SrcController, names: sp, w: protocol.Clock{c, d}} }
	final := func(c, d uint64) protocol.Props {
		return protocol.Props{protocol.PropSetpoint: {Val: 20.0, W: protocol.Clock{c, d}}, protocol.PropPreset: {Val: "none", W: protocol.Clock{c, d}}}
	}
	for _, tc := range []struct {
		name            string
		devW, ctlW      []write
		final           protocol.Props
		lost, conflicts int // lost counts a write once per property (setpoint and preset)
	}{
		{"each replaced by the next", []write{dev(0, 1), dev(2, 3)}, []write{ctl(2, 1), ctl(4, 3)}, final(4, 3), 0, 0},
		{"conflict won by the device", []write{dev(0, 2)}, []write{ctl(2, 1)}, final(0, 2), 0, 1},
		{"conflict won, then replaced", []write{dev(0, 2)}, []write{ctl(2, 1), ctl(4, 2)}, final(4, 2), 0, 1},
		{"conflict lost by the device", []write{dev(0, 2)}, []write{ctl(2, 1)}, final(2, 1), 2, 1},
		{"device write lost", []write{dev(0, 1), dev(0, 5)}, nil, final(0, 1), 2, 0},
		{"controller write lost", nil, []write{ctl(2, 0), ctl(3, 0)}, final(2, 0), 2, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r result
			r.checkWrites(&device{id: "d", writes: tc.devW, ctl: tc.ctlW}, tc.final)
			if r.conflicts != tc.conflicts {
				t.Errorf("conflicts = %d, want %d", r.conflicts, tc.conflicts)
			}
			if r.lost != tc.lost {
				t.Errorf("lost = %d (%v), want %d", r.lost, r.lostSamples, tc.lost)
			}
		})
	}
}
