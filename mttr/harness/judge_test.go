package harness

import (
	"strings"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

func props(kv ...any) protocol.Props {
	p := protocol.Props{}
	for i := 0; i < len(kv); i += 3 {
		p[kv[i].(string)] = protocol.Prop{Val: kv[i+1], W: kv[i+2].(protocol.Clock)}
	}
	return p
}

// The cycle the harness plays: before the outage both sides agree at
// [2,3]; offline the device writes setpoint+mode ([2,4]) then setpoint
// ([2,5]); the controller writes mode ([3,3]), concurrent with [2,4].
func TestJudge(t *testing.T) {
	l1 := write{Props: map[string]any{"setpoint_c": 21.0, "mode": "heat"}, W: protocol.Clock{2, 4}}
	l2 := write{Props: map[string]any{"setpoint_c": 23.0}, W: protocol.Clock{2, 5}}
	c1 := write{Props: map[string]any{"mode": "cool"}, W: protocol.Clock{3, 3}}
	// The controller wrote after hearing both local changes.
	late := write{Props: map[string]any{"mode": "auto"}, W: protocol.Clock{5, 5}}
	good := props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "heat", protocol.Clock{2, 4})
	cases := []struct {
		name       string
		local      []write
		ctrlWrites []write
		dev, ctrl  protocol.Props
		want       verdict
		note       string
	}{
		{"device wins, nothing lost", []write{l1, l2}, []write{c1}, good, good,
			verdict{LocalChanges: 2, Conflicts: 1}, ""},
		{"no controller write", []write{l1, l2}, nil, good, good,
			verdict{LocalChanges: 2}, ""},
		{"last local change lost", []write{l1, l2}, []write{c1},
			good, props("setpoint_c", 21.0, protocol.Clock{2, 4}, "mode", "heat", protocol.Clock{2, 4}),
			verdict{LocalChanges: 2, Lost: 1, Conflicts: 1, Diverged: true}, "setpoint_c"},
		{"every change lost, controller's value stands", []write{l1, l2}, []write{c1},
			props("setpoint_c", 20.0, protocol.Clock{2, 3}, "mode", "cool", protocol.Clock{3, 3}),
			props("setpoint_c", 20.0, protocol.Clock{2, 3}, "mode", "cool", protocol.Clock{3, 3}),
			verdict{LocalChanges: 2, Lost: 2, Conflicts: 1, Wrong: 1}, "concurrent write"},
		{"controller took the device's mode but the device took the controller's", []write{l1, l2}, []write{c1},
			props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "cool", protocol.Clock{3, 3}), good,
			verdict{LocalChanges: 2, Conflicts: 1, Wrong: 1, Diverged: true}, "won"},
		{"a later controller write stands on both sides", []write{l1, l2}, []write{late},
			props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "auto", protocol.Clock{5, 5}),
			props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "auto", protocol.Clock{5, 5}),
			verdict{LocalChanges: 2}, ""},
		{"a later controller write that never reached the device", []write{l1, l2}, []write{late},
			good, props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "auto", protocol.Clock{5, 5}),
			verdict{LocalChanges: 2, Diverged: true}, "did not reach the device"},
		{"a stale controller write (before the local ones) is no conflict", []write{l1, l2},
			[]write{{Props: map[string]any{"mode": "off"}, W: protocol.Clock{2, 1}}}, good, good,
			verdict{LocalChanges: 2}, ""},
		{"values differ with equal stamps", []write{{Props: map[string]any{"mode": "heat"}, W: protocol.Clock{2, 4}}}, nil,
			props("mode", "heat", protocol.Clock{2, 4}), props("mode", "cool", protocol.Clock{2, 4}),
			verdict{LocalChanges: 1, Diverged: true}, "out of sync"},
		{"a property only one side has", []write{}, nil,
			props("mode", "heat", protocol.Clock{2, 4}), props("mode", "heat", protocol.Clock{2, 4}, "setpoint_c", 20.0, protocol.Clock{1, 0}),
			verdict{Diverged: true}, "setpoint_c device <nil>"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := judge(c.local, c.ctrlWrites, c.dev, c.ctrl)
			if got.LocalChanges != c.want.LocalChanges || got.Lost != c.want.Lost || got.Conflicts != c.want.Conflicts ||
				got.Wrong != c.want.Wrong || got.Diverged != c.want.Diverged {
				t.Fatalf("judge = %+v, want %+v", got, c.want)
			}
			notes := strings.Join(got.Notes, " | ")
			if c.note != "" && !strings.Contains(notes, c.note) {
				t.Fatalf("notes %q lack %q", notes, c.note)
			}
			if c.note == "" && notes != "" {
				t.Fatalf("unexpected notes %q", notes)
			}
		})
	}
}

func TestResynced(t *testing.T) {
	l1 := write{Props: map[string]any{"setpoint_c": 21.0, "mode": "heat"}, W: protocol.Clock{2, 4}}
	l2 := write{Props: map[string]any{"setpoint_c": 23.0}, W: protocol.Clock{2, 5}}
	cases := []struct {
		name string
		ctrl protocol.Props
		want bool
	}{
		{"both held", props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "heat", protocol.Clock{2, 4}), true},
		{"a later stamp covers", props("setpoint_c", 24.0, protocol.Clock{6, 5}, "mode", "off", protocol.Clock{6, 4}), true},
		{"only the first", props("setpoint_c", 21.0, protocol.Clock{2, 4}, "mode", "heat", protocol.Clock{2, 4}), false},
		{"mode missing", props("setpoint_c", 23.0, protocol.Clock{2, 5}), false},
		{"concurrent stamp", props("setpoint_c", 23.0, protocol.Clock{2, 5}, "mode", "cool", protocol.Clock{3, 3}), false},
		{"nothing", nil, false},
	}
	for _, c := range cases {
		if got := resynced([]write{l1, l2}, c.ctrl); got != c.want {
			t.Errorf("%s: resynced = %v, want %v", c.name, got, c.want)
		}
	}
}
