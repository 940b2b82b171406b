package control

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/haltest"
	"github.com/thermofleet/thermo/protocol"
)

func TestRunSafeStateAtStartAndStop(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	// The fake board starts with heat and fan on, as after a crash.
	h.start()
	calls := h.board.calls
	if len(calls) == 0 || calls[0] != off {
		t.Fatalf("first SetOutputs %v, want all off at start", calls)
	}
	h.at(sec(120))
	if got := h.board.outputs(); got != heating {
		t.Fatalf("outputs %v, want heating", got)
	}
	if err := h.stop(); err != nil {
		t.Fatalf("Run returned %v on cancel, want nil", err)
	}
	if got := h.board.outputs(); got != off {
		t.Fatalf("outputs after stop %v, want off", got)
	}
}

func TestRunPanicLeavesOutputsOff(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	h.start()
	h.at(sec(120))
	if got := h.board.outputs(); got != heating {
		t.Fatalf("outputs %v, want heating", got)
	}
	h.sensor.mu.Lock()
	h.sensor.pan = true
	h.sensor.mu.Unlock()
	h.clk.Advance(testConfig().Interval)
	select {
	case err := <-h.done:
		h.cancel = nil
		if err == nil || !strings.Contains(err.Error(), "panic") {
			t.Fatalf("Run = %v, want a panic error", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after a panic")
	}
	if got := h.board.outputs(); got != off {
		t.Fatalf("outputs after panic %v, want off", got)
	}
	if err := h.loop.Healthy(); err == nil {
		t.Fatal("Healthy() = nil after Run returned")
	}
}

func TestRunFailsWhenOutputsCannotBeSwitchedOffAtStart(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	h.board.failAll = true
	err := h.loop.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "switch outputs off at start") {
		t.Fatalf("Run = %v, want start error", err)
	}
}

func TestRelayFailureGoesSafeAndIsUnhealthy(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	h.start()
	if err := h.loop.Healthy(); err != nil {
		t.Fatalf("Healthy() = %v after start", err)
	}
	h.board.mu.Lock()
	h.board.failN = 1 // switching heat on fails; the safe state works
	h.board.mu.Unlock()
	h.at(sec(120))
	if got := h.board.outputs(); got != off {
		t.Fatalf("outputs %v, want off after a failed switch", got)
	}
	h.board.mu.Lock()
	h.board.failAll = true
	h.board.mu.Unlock()
	h.at(sec(130))
	if err := h.loop.Healthy(); err == nil || !strings.Contains(err.Error(), "unknown state") {
		t.Fatalf("Healthy() = %v, want unknown state", err)
	}
	h.board.mu.Lock()
	h.board.failAll = false
	h.board.mu.Unlock()
	h.at(sec(140))
	if err := h.loop.Healthy(); err != nil {
		t.Fatalf("Healthy() = %v after recovery", err)
	}
	if got := h.board.outputs(); got != heating {
		t.Fatalf("outputs %v, want heating after recovery", got)
	}
}

func TestHealthyNeedsRecentTicks(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeOff}, 18)
	if err := h.loop.Healthy(); err == nil {
		t.Fatal("Healthy() before Run = nil")
	}
	h.start()
	if err := h.loop.Healthy(); err != nil {
		t.Fatal(err)
	}
	n0 := h.loop.Snapshot().Iterations
	h.clk.Set(t0.Add(29 * time.Second)) // fires the 10s timer late; the loop ticks at 29s
	h.settle(n0)
	if err := h.loop.Healthy(); err != nil {
		t.Fatalf("Healthy() right after a tick = %v", err)
	}
	// The loop gets stuck inside a sensor read while time goes on: the
	// watchdog must see it.
	h.sensor.mu.Lock()
	h.clk.Advance(10 * time.Second)
	h.clk.Advance(time.Minute)
	err := h.loop.Healthy()
	h.sensor.mu.Unlock()
	if err == nil || !strings.Contains(err.Error(), "last tick") {
		t.Fatalf("Healthy() with a stuck loop = %v, want last tick error", err)
	}
}

func TestOutputChangeHook(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{SetpointC: 20, Mode: protocol.ModeHeat}, 18)
	h.sensor.hum = 41.2
	h.start()
	h.at(sec(120))
	h.sensor.set(21, nil)
	h.at(sec(240))
	ch := h.outputChanges()
	if len(ch) != 2 {
		t.Fatalf("%d output changes, want 2: %+v", len(ch), ch)
	}
	if !ch[0].Outputs.Heat || ch[0].TempC() != 18 || !ch[0].SensorOK || !ch[0].HasHumidity || ch[0].HumidityPct() != 41.2 {
		t.Fatalf("first change %+v", ch[0])
	}
	if ch[1].Outputs.Heat || ch[1].TempC() != 21 || !ch[1].Time.Equal(t0.Add(240*time.Second)) {
		t.Fatalf("second change %+v", ch[1])
	}
	if len(ch[1].Sensors) != 1 || ch[1].Sensors[0].Sensor != "room" || !ch[1].Sensors[0].OK() {
		t.Fatalf("per-sensor readings %+v", ch[1].Sensors)
	}
}

func TestButtonBursts(t *testing.T) {
	tests := []struct {
		name    string
		start   Settings
		presses []hal.Button
		want    []Settings // one per burst, nil when nothing changed
	}{
		{"three ups are one event", Settings{20, protocol.ModeHeat}, []hal.Button{hal.ButtonUp, hal.ButtonUp, hal.ButtonUp}, []Settings{{21.5, protocol.ModeHeat}}},
		{"down clamps at 5", Settings{5.5, protocol.ModeHeat}, []hal.Button{hal.ButtonDown, hal.ButtonDown}, []Settings{{5, protocol.ModeHeat}}},
		{"up clamps at 35", Settings{35, protocol.ModeHeat}, []hal.Button{hal.ButtonUp}, nil},
		{"up then down is no change", Settings{20, protocol.ModeHeat}, []hal.Button{hal.ButtonUp, hal.ButtonDown}, nil},
		{"mode cycles off heat cool auto", Settings{20, protocol.ModeOff}, []hal.Button{hal.ButtonMode, hal.ButtonMode, hal.ButtonMode}, []Settings{{20, protocol.ModeAuto}}},
		{"mode wraps to off", Settings{20, protocol.ModeAuto}, []hal.Button{hal.ButtonMode, hal.ButtonUp}, []Settings{{20.5, protocol.ModeOff}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t, testConfig(), tc.start, 20)
			h.start()
			for i, b := range tc.presses {
				h.press(b)
				if got := h.loop.Settings(); got != tc.start {
					t.Fatalf("settings changed to %v before the window ended", got)
				}
				if i < len(tc.presses)-1 {
					h.clk.Advance(time.Second) // within the 2s window
				}
			}
			if got := h.localChanges(); len(got) != 0 {
				t.Fatalf("OnLocalChange called during the burst: %v", got)
			}
			n0 := h.loop.Snapshot().Iterations
			h.clk.Advance(2 * time.Second)
			h.settle(n0)
			got := h.localChanges()
			if len(got) != len(tc.want) || (len(got) == 1 && got[0] != tc.want[0]) {
				t.Fatalf("local changes %v, want %v", got, tc.want)
			}
			want := tc.start
			if len(tc.want) == 1 {
				want = tc.want[0]
			}
			if s := h.loop.Settings(); s != want {
				t.Fatalf("settings %v, want %v", s, want)
			}
		})
	}
}

func TestSeparatePressesAreSeparateEvents(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeHeat}, 20)
	h.start()
	h.press(hal.ButtonUp)
	n0 := h.loop.Snapshot().Iterations
	h.clk.Advance(2 * time.Second)
	h.settle(n0)
	h.press(hal.ButtonUp)
	n0 = h.loop.Snapshot().Iterations
	h.clk.Advance(2 * time.Second)
	h.settle(n0)
	got := h.localChanges()
	want := []Settings{{20.5, protocol.ModeHeat}, {21, protocol.ModeHeat}}
	if len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("local changes %v, want %v", got, want)
	}
}

func TestRemoteSettingDuringBurstKeepsUntouchedField(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeHeat}, 20)
	h.start()
	h.press(hal.ButtonUp)
	h.set(Settings{18, protocol.ModeCool}) // a command arrives mid-burst
	n0 := h.loop.Snapshot().Iterations
	h.clk.Advance(2 * time.Second)
	h.settle(n0)
	// The person pressed up from 20: their 20.5 wins, the remote mode stays.
	if got, want := h.loop.Settings(), (Settings{20.5, protocol.ModeCool}); got != want {
		t.Fatalf("settings %v, want %v", got, want)
	}
}

func TestSetSettingsValidates(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeHeat}, 20)
	for _, s := range []Settings{{4.9, protocol.ModeHeat}, {35.1, protocol.ModeHeat}, {20, "warm"}, {20, ""}} {
		if err := h.loop.SetSettings(s); err == nil {
			t.Errorf("SetSettings(%v) = nil, want error", s)
		}
	}
	if got := h.loop.Settings(); got != (Settings{20, protocol.ModeHeat}) {
		t.Fatalf("settings %v changed by invalid input", got)
	}
	if err := h.loop.SetSettings(Settings{21.04, protocol.ModeAuto}); err != nil {
		t.Fatal(err)
	}
	if got := h.loop.Settings(); got != (Settings{21, protocol.ModeAuto}) {
		t.Fatalf("settings %v, want rounded to 0.1", got)
	}
}

func TestNewRefusesUnknownControlSensor(t *testing.T) {
	clk := haltest.NewClock(t0)
	b := newFakeBoard(t, clk, &fakeSensor{name: "room"}, &fakeSensor{name: "floor"})
	cfg := testConfig()
	cfg.Sensor = "attic"
	if _, err := New(cfg, b, WithClock(clk)); err == nil || !strings.Contains(err.Error(), `"attic"`) {
		t.Fatalf("New = %v, want unknown sensor error", err)
	}
	cfg.Sensor = "floor"
	l, err := New(cfg, b, WithClock(clk))
	if err != nil || l.ControlSensor() != "floor" {
		t.Fatalf("New = %v, control sensor %q", err, l.ControlSensor())
	}
}

func TestOutputsTheBoardLacksAreNeverDriven(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeCool}, 30)
	h.board.wired = hal.Outputs{Heat: true} // a heat-only house
	h.loop.wired = h.board.wired            // New read it before the test changed it
	h.start()
	h.at(mins(10))
	if got := h.board.outputs(); got != off {
		t.Fatalf("outputs %v on a board without cool and fan, want off", got)
	}
	for _, c := range h.board.calls {
		if c.Cool || c.Fan {
			t.Fatalf("SetOutputs(%v) on a board without cool and fan", c)
		}
	}
}

// TestButtonsOnlyAsk: a burst of presses asks for settings; the loop runs
// with them only once they come back through SetSettings. A change the
// agent refuses (it could not be saved) never reaches the outputs.
func TestButtonsOnlyAsk(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeOff}, 20)
	var asked []Settings
	h.loop.Notify(nil, func(s Settings) { h.mu.Lock(); asked = append(asked, s); h.mu.Unlock() })
	h.start()
	h.press(hal.ButtonMode) // off → heat: would switch the heater on at 20 °C... if applied
	h.press(hal.ButtonUp)
	n0 := h.loop.Snapshot().Iterations
	h.clk.Advance(2 * time.Second)
	h.settle(n0)
	h.mu.Lock()
	got := append([]Settings(nil), asked...)
	h.mu.Unlock()
	if want := (Settings{20.5, protocol.ModeHeat}); len(got) != 1 || got[0] != want {
		t.Fatalf("asked for %v, want %v", got, want)
	}
	if s := h.loop.Settings(); s != (Settings{20, protocol.ModeOff}) {
		t.Fatalf("the loop runs with %v before anyone applied the request", s)
	}
	if o := h.loop.Snapshot().Outputs; o.Heat {
		t.Fatal("the heater went on for a change nobody accepted")
	}
}

// TestLongModePressAsksForAPreset: holding the mode button asks for the
// next preset (the loop does not know the presets) and changes no mode.
func TestLongModePressAsksForAPreset(t *testing.T) {
	h := newHarness(t, testConfig(), Settings{20, protocol.ModeHeat}, 20)
	asked := make(chan struct{}, 1)
	h.loop.NotifyPresetButton(func() { asked <- struct{}{} })
	h.start()
	h.board.buttons <- hal.ButtonEvent{Button: hal.ButtonMode, Long: true, Time: h.clk.Now()}
	select {
	case <-asked:
	case <-time.After(5 * time.Second):
		t.Fatal("a long press of the mode button asked for nothing")
	}
	if s := h.loop.Settings(); s != (Settings{20, protocol.ModeHeat}) || len(h.localChanges()) != 0 {
		t.Fatalf("settings %v, local changes %v after a long press", s, h.localChanges())
	}
}
