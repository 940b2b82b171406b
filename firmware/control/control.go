// Package control is the thermostat's control loop: it reads the board's
// sensors, switches the heat, cool and fan relays by hysteresis around the
// setpoint, and turns wall-button presses into setting changes.
//
// It runs on its own, with no knowledge of the network: the sync side feeds
// it settings with SetSettings and hears about relay changes and button
// bursts through hooks. Safety comes before comfort: every output is off at
// start and when Run returns (panics included), heat and cool are never on
// together, a sensor that stops giving valid readings switches everything
// off, outputs respect minimum on/off times and a maximum run time, and
// frost protection heats an empty house even when the mode is off.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/protocol"
	"periph.io/x/conn/v3/physic"
)

// Settings is what a user chooses: the protocol's setpoint_c and mode,
// with the protocol's limits, modes and rounding (package protocol is the
// one rulebook; the loop keeps none of its own).
type Settings struct {
	SetpointC float64
	Mode      string
}

// DefaultSettings is what a board with no stored state starts with: off,
// so a fresh install heats only through frost protection until told to.
var DefaultSettings = Settings{SetpointC: 20, Mode: protocol.ModeOff}

// Validate reports settings the protocol would refuse: a setpoint outside
// its range or an unknown mode.
func (s Settings) Validate() error {
	if _, err := protocol.Normalize(protocol.PropSetpoint, s.SetpointC); err != nil {
		return err
	}
	if _, err := protocol.Normalize(protocol.PropMode, s.Mode); err != nil {
		return err
	}
	return nil
}

// Snapshot is the loop's state at one instant: what telemetry reports.
type Snapshot struct {
	Time     time.Time
	Settings Settings // the settings in force
	// Pending are the settings of a button burst still in its window, equal
	// to Settings when there is none; a display would show these.
	Pending Settings
	// Temperature and Humidity of the control sensor's last valid reading.
	Temperature    physic.Temperature
	HasTemperature bool // a valid reading has been seen since start
	Humidity       physic.RelativeHumidity
	HasHumidity    bool
	// SensorOK is false while the control sensor has given no valid
	// reading for Config.SensorTimeout (and before its first one).
	SensorOK bool
	// Outputs are the relays as driven.
	Outputs hal.Outputs
	// Sensors holds every sensor's latest reading, in board order.
	Sensors []hal.Reading
	// Iterations counts the loop's finished passes since start: a loop that
	// is alive counts on (metrics, and tests waiting for a pass).
	Iterations uint64
}

// TempC is the control temperature in °C rounded to 0.01.
func (s Snapshot) TempC() float64 {
	return math.Round(s.Temperature.Celsius()*100) / 100
}

// HumidityPct is the relative humidity in percent rounded to 0.1.
func (s Snapshot) HumidityPct() float64 {
	return math.Round(float64(s.Humidity)/float64(physic.PercentRH)*10) / 10
}

// Option configures a Loop.
type Option func(*Loop)

// WithClock sets the clock (default: the wall clock). Give the simulated
// board's clock here so room and loop run at the same speed.
func WithClock(c hal.Clock) Option { return func(l *Loop) { l.clock = c } }

// WithLogger sets the logger (default: slog.Default()).
func WithLogger(log *slog.Logger) Option { return func(l *Loop) { l.log = log } }

// WithSettings sets the settings the loop starts with (default:
// DefaultSettings). The firmware passes the ones it restored from its
// state directory.
func WithSettings(s Settings) Option { return func(l *Loop) { l.settings = s } }

// Notify wires the loop to whatever keeps its settings, once both exist
// and before Run: onOutput is called after every change of the driven
// outputs, with a snapshot taken just after it (the firmware sends
// telemetry); onLocal at the end of each burst of button presses that
// asks for other settings, with the settings asked for. The buttons only
// ask: the loop runs with them once they come back through SetSettings
// (the firmware's agent records the change as a device event first, and
// a change it refuses never reaches the outputs). Both are called on the
// loop goroutine, with no lock held, and must not block for long.
func (l *Loop) Notify(onOutput func(Snapshot), onLocal func(Settings)) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onOutput, l.onLocal = onOutput, onLocal
}

// NotifyPresetButton wires a long press of the mode button, which asks for
// the next preset: the loop does not know the presets (they are the
// protocol's properties), so it only passes the request on. Called on the
// loop goroutine, with no lock held; before Run.
func (l *Loop) NotifyPresetButton(f func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.onPreset = f
}

// Loop is the control loop of one board.
type Loop struct {
	cfg      Config
	board    hal.Board
	clock    hal.Clock
	log      *slog.Logger
	sensors  []hal.Sensor
	ctrl     int // index of the control sensor in sensors
	wired    hal.Outputs
	onOutput func(Snapshot)
	onLocal  func(Settings)
	onPreset func()
	wake     chan struct{}

	mu         sync.Mutex
	running    bool
	iterations uint64 // finished loop iterations, in Snapshot
	settings   Settings
	burst      *burst // non-nil while button presses are being gathered
	readings   []hal.Reading
	last       hal.Reading // last valid reading of the control sensor
	lastAt     time.Time   // loop time of last; zero before the first
	sensorOK   bool
	heat, cool relay
	outputs    hal.Outputs // as driven
	outputsOK  bool        // the last SetOutputs succeeded
	lastTick   time.Time
	started    time.Time
	faulted    bool // a sensor fault was logged and not yet its recovery

	counts counts // for Counts (counts.go)
}

// burst gathers button presses until the window after the last one ends.
type burst struct {
	until       time.Time
	setpointC   float64
	mode        string
	touchedSP   bool
	touchedMode bool
	presses     int
}

// relay tracks one output's state and since when, for min on/off and max
// run.
type relay struct {
	on    bool
	since time.Time
}

// New returns a loop for board. It fails when cfg is invalid, when the
// board has no sensor, or when cfg.Sensor names none of them.
func New(cfg Config, board hal.Board, opts ...Option) (*Loop, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	l := &Loop{
		cfg:      cfg,
		board:    board,
		clock:    hal.SystemClock{},
		log:      slog.Default(),
		settings: DefaultSettings,
		wake:     make(chan struct{}, 1),
	}
	for _, o := range opts {
		o(l)
	}
	if err := l.settings.Validate(); err != nil {
		return nil, fmt.Errorf("control: initial settings: %w", err)
	}
	l.settings.SetpointC = protocol.RoundSetpoint(l.settings.SetpointC)
	l.wired = board.Wired()
	l.sensors = board.Sensors()
	if len(l.sensors) == 0 {
		return nil, errors.New("control: the board has no sensor to control with")
	}
	l.ctrl = -1
	var names []string
	for i, s := range l.sensors {
		names = append(names, s.Name())
		if cfg.Sensor == "" && i == 0 || s.Name() == cfg.Sensor {
			l.ctrl = i
		}
	}
	if l.ctrl < 0 {
		return nil, cfg.lines.Errorf("sensor", "no sensor named %q on the board (have %s)", cfg.Sensor, strings.Join(names, ", "))
	}
	l.readings = make([]hal.Reading, len(l.sensors))
	l.counts.readErrors = make([]uint64, len(l.sensors))
	for i, s := range l.sensors {
		l.readings[i] = hal.Reading{Sensor: s.Name(), Err: errors.New("not read yet")}
	}
	l.log = l.log.With("component", "control")
	return l, nil
}

// ControlSensor is the name of the sensor the loop controls with.
func (l *Loop) ControlSensor() string { return l.sensors[l.ctrl].Name() }

// SetSettings replaces the settings in force (the sync side calls it after
// merging a command). Safe from any goroutine; the loop reacts at once. An
// invalid value is refused and changes nothing.
func (l *Loop) SetSettings(s Settings) error {
	if err := s.Validate(); err != nil {
		return fmt.Errorf("control: %w", err)
	}
	s.SetpointC = protocol.RoundSetpoint(s.SetpointC)
	l.mu.Lock()
	changed := s != l.settings
	l.settings = s
	l.mu.Unlock()
	if changed {
		l.log.Info("settings changed", "setpoint_c", s.SetpointC, "mode", s.Mode)
		l.poke()
	}
	return nil
}

// Settings returns the settings in force.
func (l *Loop) Settings() Settings {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.settings
}

// Snapshot returns the current state.
func (l *Loop) Snapshot() Snapshot {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.snapshotLocked(l.clock.Now())
}

func (l *Loop) snapshotLocked(now time.Time) Snapshot {
	s := Snapshot{
		Time:           now,
		Settings:       l.settings,
		Pending:        l.pendingLocked(),
		Temperature:    l.last.Temperature,
		HasTemperature: !l.lastAt.IsZero(),
		Humidity:       l.last.Humidity,
		HasHumidity:    l.last.HasHumidity,
		SensorOK:       l.sensorOK,
		Outputs:        l.outputs,
		Sensors:        append([]hal.Reading(nil), l.readings...),
		Iterations:     l.iterations,
	}
	return s
}

func (l *Loop) pendingLocked() Settings {
	p := l.settings
	if b := l.burst; b != nil {
		if b.touchedSP {
			p.SetpointC = b.setpointC
		}
		if b.touchedMode {
			p.Mode = b.mode
		}
	}
	return p
}

// Healthy reports nil when the loop ticked within the last three intervals
// and the outputs are in a known state; the systemd watchdog ping is sent
// only then, so a stuck loop or a relay that cannot be driven gets the
// service restarted (and its outputs reset by the restart).
func (l *Loop) Healthy() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	switch {
	case !l.running:
		return errors.New("control loop not running")
	case !l.outputsOK:
		return errors.New("control loop: outputs in an unknown state (last switch failed)")
	case now.Sub(l.lastTick) > 3*l.cfg.Interval:
		return fmt.Errorf("control loop: last tick %v ago", now.Sub(l.lastTick).Round(time.Millisecond))
	}
	return nil
}

func (l *Loop) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// Run drives the outputs until ctx is done. It switches every output off
// first and again when it returns, for whatever reason, a panic included
// (which it returns as an error). Cancellation is a clean stop: it returns
// nil then. The firmware treats any error as fatal and exits, so systemd
// restarts it into a known state.
func (l *Loop) Run(ctx context.Context) (err error) {
	l.mu.Lock()
	if l.running {
		l.mu.Unlock()
		return errors.New("control: Run called twice")
	}
	l.running = true
	l.mu.Unlock()

	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("control loop panic: %v", r)
			l.log.Error("control loop panic; outputs off", "panic", r, "stack", string(debug.Stack()))
		}
		if serr := l.safeState(); serr != nil {
			err = errors.Join(err, serr)
		}
		l.mu.Lock()
		l.running = false
		l.mu.Unlock()
	}()

	now := l.clock.Now()
	if err := l.board.SetOutputs(hal.Outputs{}); err != nil {
		return fmt.Errorf("control: switch outputs off at start: %w", err)
	}
	l.mu.Lock()
	l.started = now
	l.outputs, l.outputsOK = hal.Outputs{}, true
	// Off since now: min_off counts from start, so a crash loop cannot
	// short-cycle a compressor.
	l.heat = relay{since: now}
	l.cool = relay{since: now}
	s := l.settings
	l.mu.Unlock()
	l.log.Info("control loop started", "sensor", l.ControlSensor(), "setpoint_c", s.SetpointC, "mode", s.Mode,
		"band_c", l.cfg.BandC, "frost", *l.cfg.Frost.Enabled, "frost_floor_c", l.cfg.Frost.FloorC)

	buttons := l.board.Buttons()
	l.tick(now)
	next := now.Add(l.cfg.Interval)
	for {
		wait := next.Sub(now)
		l.mu.Lock()
		if l.burst != nil {
			if d := l.burst.until.Sub(now); d < wait {
				wait = d
			}
		}
		l.mu.Unlock()
		t := l.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			l.log.Info("control loop stopping; outputs off")
			return nil
		case <-t.C():
		case ev, ok := <-buttons:
			if !ok {
				buttons = nil
			} else {
				l.press(ev, l.clock.Now())
			}
		case <-l.wake:
		}
		t.Stop()
		now = l.clock.Now()
		l.endBurstIfDue(now)
		if !now.Before(next) {
			l.tick(now)
			next = next.Add(l.cfg.Interval)
			if !next.After(now) {
				next = now.Add(l.cfg.Interval)
			}
		} else {
			l.evaluate(now)
		}
		l.mu.Lock()
		l.iterations++
		l.mu.Unlock()
	}
}

// safeState switches every output off, retrying once: the heater must not
// stay on because one bus write failed.
func (l *Loop) safeState() error {
	err := l.board.SetOutputs(hal.Outputs{})
	if err != nil {
		l.log.Error("switching outputs off failed; retrying", "err", err)
		err = l.board.SetOutputs(hal.Outputs{})
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err != nil {
		l.outputsOK = false
		return fmt.Errorf("control: switch outputs off: %w", err)
	}
	l.outputs, l.outputsOK = hal.Outputs{}, true
	return nil
}

// tick reads every sensor, then decides.
func (l *Loop) tick(now time.Time) {
	readings := make([]hal.Reading, len(l.sensors))
	for i, s := range l.sensors {
		r := s.Read()
		if r.Sensor == "" {
			r.Sensor = s.Name()
		}
		if r.Time.IsZero() {
			r.Time = now
		}
		readings[i] = r
	}
	l.mu.Lock()
	l.readings = readings
	l.counts.read(readings)
	l.lastTick = now
	if r := readings[l.ctrl]; r.OK() {
		l.last, l.lastAt = r, now
	} else {
		l.log.Debug("control sensor read failed", "sensor", r.Sensor, "err", r.Err)
	}
	l.mu.Unlock()
	l.evaluate(now)
}

// evaluate applies every rule to the latest reading and drives the relays
// if the decision changed.
func (l *Loop) evaluate(now time.Time) {
	l.mu.Lock()
	ok := !l.lastAt.IsZero() && now.Sub(l.lastAt) <= l.cfg.SensorTimeout
	l.sensorOK = ok
	r := l.readings[l.ctrl]
	switch {
	case !ok && !l.faulted && (!l.lastAt.IsZero() || now.Sub(l.started) >= l.cfg.SensorTimeout):
		l.faulted = true
		since := l.lastAt
		if since.IsZero() {
			since = l.started
		}
		l.log.Error("control sensor: no valid reading; outputs off until it recovers",
			"sensor", r.Sensor, "for", now.Sub(since), "err", r.Err)
	case ok && l.faulted:
		l.faulted = false
		l.log.Warn("control sensor recovered; control resumes", "sensor", r.Sensor, "temp", l.last.Temperature.String())
	}
	want, reasons := l.decideLocked(now)
	if want == l.outputs && l.outputsOK {
		l.mu.Unlock()
		return
	}
	prev := l.outputs
	l.mu.Unlock()

	err := l.board.SetOutputs(want)
	l.mu.Lock()
	if err != nil {
		l.log.Error("switching outputs failed; trying the safe state", "want", want.String(), "err", err)
		l.mu.Unlock()
		_ = l.safeState()
		l.mu.Lock()
		want = l.outputs
	} else {
		l.outputs, l.outputsOK = want, true
	}
	if want.Heat != l.heat.on {
		l.heat = relay{on: want.Heat, since: now}
	}
	if want.Cool != l.cool.on {
		l.cool = relay{on: want.Cool, since: now}
	}
	l.counts.switched(prev, want)
	changed := want != prev
	snap := l.snapshotLocked(now)
	onOutput := l.onOutput
	l.mu.Unlock()
	if changed {
		l.log.Info("outputs", "heat", want.Heat, "cool", want.Cool, "fan", want.Fan,
			"temp", snap.Temperature, "setpoint_c", snap.Settings.SetpointC, "mode", snap.Settings.Mode, "why", reasons)
		if onOutput != nil {
			onOutput(snap)
		}
	}
}

// decideLocked computes the outputs the rules allow now. reasons says why,
// for the log.
func (l *Loop) decideLocked(now time.Time) (hal.Outputs, string) {
	if !l.sensorOK {
		return hal.Outputs{}, "sensor not ok"
	}
	c := l.cfg
	t := l.last.Temperature
	s := l.settings
	half := c.BandC / 2
	inf := math.Inf(1)

	// Each output has an "on at or beyond" and an "off at or beyond"
	// threshold; between them it keeps its state (hysteresis).
	heatOn, heatOff := -inf, -inf // never on
	coolOn, coolOff := inf, inf
	switch s.Mode {
	case protocol.ModeHeat:
		heatOn, heatOff = s.SetpointC-half, s.SetpointC+half
	case protocol.ModeCool:
		coolOn, coolOff = s.SetpointC+half, s.SetpointC-half
	case protocol.ModeAuto:
		h, k := s.SetpointC-c.AutoDeadbandC/2, s.SetpointC+c.AutoDeadbandC/2
		heatOn, heatOff = h-half, h+half
		coolOn, coolOff = k+half, k-half
	}
	frost := false
	if *c.Frost.Enabled {
		// Frost keeps heating until floor+band, whatever the mode.
		heatOn = math.Max(heatOn, c.Frost.FloorC)
		heatOff = math.Max(heatOff, c.Frost.FloorC+c.BandC)
		frost = t <= hal.Celsius(c.Frost.FloorC)
	}
	// A mode that no longer uses an output switches it off at once;
	// only the thermostat's own hysteresis waits for min_on.
	modeHeats := s.Mode == protocol.ModeHeat || s.Mode == protocol.ModeAuto ||
		*c.Frost.Enabled && t < hal.Celsius(c.Frost.FloorC+c.BandC)
	modeCools := (s.Mode == protocol.ModeCool || s.Mode == protocol.ModeAuto) && !frost

	var why []string
	wantHeat := hyst(l.heat.on, t, heatOn, heatOff, false)
	wantCool := hyst(l.cool.on, t, coolOn, coolOff, true)
	if wantHeat && wantCool { // cannot happen with deadband >= band; be sure
		wantCool = false
	}
	heat := l.applyTimes(now, "heat", &l.heat, c.Heat, wantHeat, modeHeats, &why)
	cool := l.applyTimes(now, "cool", &l.cool, c.Cool, wantCool, modeCools, &why)
	if heat && cool {
		// Never both: keep whichever is already on, drop the other.
		if l.heat.on {
			cool = false
		} else {
			heat = false
		}
		why = append(why, "never heat and cool together")
	}
	o := hal.Outputs{Heat: heat, Cool: cool, Fan: cool || (heat && c.FanWithHeat)}
	o.Heat = o.Heat && l.wired.Heat
	o.Cool = o.Cool && l.wired.Cool
	o.Fan = o.Fan && l.wired.Fan
	if frost && heat {
		why = append(why, "frost protection")
	}
	return o, strings.Join(why, "; ")
}

// hyst is hysteresis: for heating (cooling=false) on at t <= on, off at
// t >= off; for cooling the other way round.
func hyst(isOn bool, t physic.Temperature, on, off float64, cooling bool) bool {
	c := t.Celsius()
	if cooling {
		if isOn {
			return c > off
		}
		return c >= on
	}
	if isOn {
		return c < off
	}
	return c <= on
}

// applyTimes enforces min on, min off and max run for one relay. allowed
// is false when the mode no longer uses the output: then it goes off at
// once, min on or not.
func (l *Loop) applyTimes(now time.Time, name string, r *relay, oc OutputConfig, want, allowed bool, why *[]string) bool {
	ran := now.Sub(r.since)
	switch {
	case r.on && ran >= oc.MaxRun:
		l.log.Warn("maximum run time reached; switching off to rest", "output", name, "ran", ran, "max_run", oc.MaxRun)
		*why = append(*why, name+" max run reached")
		return false
	case r.on && !want && allowed && ran < oc.MinOn:
		return true // hysteresis says off, protection says not yet
	case r.on && !want:
		*why = append(*why, name+" off")
		return false
	case !r.on && want && ran < oc.MinOff:
		return false // resting
	case !r.on && want:
		*why = append(*why, name+" on")
		return true
	}
	return r.on
}

// press handles one debounced button press: the change is gathered into
// the current burst and applied when the burst's window ends.
func (l *Loop) press(ev hal.ButtonEvent, now time.Time) {
	if ev.Button == hal.ButtonMode && ev.Long {
		l.mu.Lock()
		f := l.onPreset
		l.mu.Unlock()
		l.log.Info("mode button held: next preset")
		if f != nil {
			f()
		}
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.burst
	if b == nil {
		b = &burst{}
		l.burst = b
	}
	p := l.pendingLocked()
	switch ev.Button {
	case hal.ButtonUp, hal.ButtonDown:
		step := l.cfg.ButtonStepC
		if ev.Button == hal.ButtonDown {
			step = -step
		}
		b.setpointC = protocol.RoundSetpoint(math.Min(protocol.MaxSetpoint, math.Max(protocol.MinSetpoint, p.SetpointC+step)))
		b.touchedSP = true
	case hal.ButtonMode:
		i := 0
		for j, m := range protocol.Modes {
			if m == p.Mode {
				i = j
			}
		}
		b.mode = protocol.Modes[(i+1)%len(protocol.Modes)]
		b.touchedMode = true
	default:
		l.log.Warn("unknown button ignored", "button", ev.Button.String())
		return
	}
	b.presses++
	b.until = now.Add(l.cfg.ButtonWindow)
	l.log.Debug("button", "button", ev.Button.String(), "pending", l.pendingLocked())
}

// endBurstIfDue applies a finished burst and reports it once.
func (l *Loop) endBurstIfDue(now time.Time) {
	l.mu.Lock()
	b := l.burst
	if b == nil || now.Before(b.until) {
		l.mu.Unlock()
		return
	}
	p := l.pendingLocked()
	l.burst = nil
	changed := p != l.settings
	onLocal := l.onLocal
	l.mu.Unlock()
	if !changed {
		l.log.Info("button presses left the settings unchanged", "presses", b.presses)
		return
	}
	l.log.Info("buttons ask for new settings", "setpoint_c", p.SetpointC, "mode", p.Mode, "presses", b.presses)
	if onLocal != nil {
		onLocal(p)
	}
}
