package agent

import (
	"fmt"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// withSchedule is fresh() with a week program: every day 18:30 22 °C and
// 22:00 preset sleep (18 °C by default), in Berlin's time. testStart is
// Tuesday 18:00 in Berlin.
func withSchedule(t *testing.T) *protocol.DeviceState {
	t.Helper()
	day := []any{map[string]any{"at": "18:30", "setpoint_c": 22.0}, map[string]any{"at": "22:00", "preset": "sleep"}}
	week := map[string]any{}
	for _, d := range protocol.Weekdays {
		week[d] = day
	}
	sch, err := protocol.Normalize(protocol.PropSchedule, map[string]any{"enabled": true, "tz": "Europe/Berlin", "week": week})
	if err != nil {
		t.Fatal(err)
	}
	st := fresh()
	st.Replica.Props[protocol.PropSchedule] = protocol.Prop{Val: sch}
	return st
}

// scheduleEvent waits for an event with src "schedule" setting sp.
func scheduleEvent(t *testing.T, ctl *controller, sp float64, preset string) protocol.Message {
	t.Helper()
	var got protocol.Message
	ctl.WaitMatch(t, fmt.Sprintf("a schedule event setting %.1f (%s)", sp, preset), func(m testenv.Message) bool {
		ev, _, err := protocol.DecodeMessage(m.Payload)
		if err != nil || m.Topic != protocol.Topic(root, ctl.id, protocol.KindEvent) || ev.Src != protocol.SrcSchedule {
			return false
		}
		s, _ := ev.Props.Setpoint()
		p, _ := ev.Props.Preset()
		got = ev
		return s == sp && p == preset
	})
	return got
}

// TestScheduleOnTheDevice: the device runs its week program on its own
// clock. At start it catches up with the entry in force (last night's
// sleep), each entry then applies at its time as a device write (src
// schedule), a person's change holds until the next entry, the hold and
// the last entry applied survive a restart, and telemetry announces the
// next entry.
func TestScheduleOnTheDevice(t *testing.T) {
	e := embeddedEnv(t)
	ctl := newController(t, e, "d1")
	dir := t.TempDir()
	d := startDevice(t, e, "d1", dir, withSchedule(t), devOpts{})

	// Catch-up at start: Monday 22:00, sleep, 18 °C.
	ev := scheduleEvent(t, ctl, 18, "sleep")
	if w := ev.Props[protocol.PropSetpoint].W; w != ev.Props[protocol.PropPreset].W {
		t.Errorf("preset and setpoint written apart: %v %v", w, ev.Props[protocol.PropPreset].W)
	}
	next := d.agent.Next()
	if next == nil || !next.At.Equal(time.Date(2026, 11, 24, 17, 30, 0, 0, time.UTC)) || next.SetpointC != 22 || next.Preset != "" {
		t.Fatalf("next entry %+v, want 22 °C at 17:30 UTC", next)
	}

	// 18:30 in Berlin: 22 °C, preset none.
	d.clock.Advance(30 * time.Minute)
	scheduleEvent(t, ctl, 22, protocol.PresetNone)
	testenv.WaitFor(t, "the loop on 22 °C", func() bool { return d.therm.Settings().SetpointC == 22 })

	// A person sets 19.5: it holds, through a restart, until 22:00.
	d.set(map[string]any{protocol.PropSetpoint: 19.5})
	d.clock.Advance(time.Hour)
	now := d.clock.Now()
	d.stop()
	d = startDevice(t, e, "d1", dir, nil, devOpts{start: now})
	testenv.WaitFor(t, "the device to run again", func() bool { return d.status().Connected })
	if sp, _ := d.status().Props.Setpoint(); sp != 19.5 {
		t.Fatalf("after a restart the setpoint is %v, want the held 19.5", sp)
	}
	if n := d.agent.Next(); n == nil || n.Preset != "sleep" || n.SetpointC != 18 {
		t.Fatalf("next entry %+v, want preset sleep (18 °C)", n)
	}
	d.clock.Advance(2 * time.Hour) // 21:30 → past 22:00 Berlin
	scheduleEvent(t, ctl, 18, "sleep")
}

// TestScheduleWriteAppliesAtOnce: a schedule written by the controller
// whose entry in force differs takes effect at once; disabling it leaves
// the setpoint where it is; an edit that keeps the entry in force as it
// was applies nothing.
func TestScheduleWriteAppliesAtOnce(t *testing.T) {
	e := embeddedEnv(t)
	ctl := newController(t, e, "d1")
	d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
	ctl.waitEvent(protocol.Clock{0, 1})
	write := func(vc protocol.Clock, enabled bool, sp float64) {
		ctl.command(fmt.Sprintf(`{"v":1,"vc":[%d,%d],"props":{"schedule":{"val":{"enabled":%v,"tz":"Europe/Berlin","week":{"tue":[{"at":"07:00","setpoint_c":%v}]}},"w":[%d,%d]}},"src":"controller"}`,
			vc[0], vc[1], enabled, sp, vc[0], vc[1]), false)
	}
	write(protocol.Clock{1, 1}, true, 23)
	scheduleEvent(t, ctl, 23, protocol.PresetNone)
	before := d.status().VC
	write(protocol.Clock{5, 3}, true, 23) // same entry in force: nothing to apply
	testenv.WaitFor(t, "the edit received", func() bool { return d.status().VC[0] >= 5 })
	write(protocol.Clock{7, 4}, false, 25) // disabled: the setpoint stays
	testenv.WaitFor(t, "the disable received", func() bool { return d.status().VC[0] >= 7 })
	for _, ev := range ctl.events() {
		if ev.Src == protocol.SrcSchedule && !ev.VC.LessEq(before) {
			t.Errorf("a schedule write after the first: %v %v", ev.VC, ev.Props)
		}
	}
	if sp, _ := d.status().Props.Setpoint(); sp != 23 || d.agent.Next() != nil {
		t.Errorf("setpoint %v next %+v after disabling, want 23 and no next", sp, d.agent.Next())
	}
}

// TestPresetButton: a long press of the mode button takes the next preset
// in the order of their names, its temperature with it, as a button write.
func TestPresetButton(t *testing.T) {
	e := embeddedEnv(t)
	ctl := newController(t, e, "d1")
	d := startDevice(t, e, "d1", t.TempDir(), fresh(), devOpts{})
	ctl.waitEvent(protocol.Clock{0, 1})
	for _, want := range []struct {
		preset string
		sp     float64
	}{{"away", 16}, {"comfort", 22}, {"eco", 18}, {"home", 21}, {"sleep", 18}, {"away", 16}} {
		d.agent.PresetButton()
		testenv.WaitFor(t, "preset "+want.preset, func() bool {
			p, _ := d.status().Props.Preset()
			sp, _ := d.status().Props.Setpoint()
			return p == want.preset && sp == want.sp
		})
	}
	if ev := ctl.events(); ev[len(ev)-1].Src != protocol.SrcButton {
		t.Errorf("preset button sent src %q", ev[len(ev)-1].Src)
	}
}
