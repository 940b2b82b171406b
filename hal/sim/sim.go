// Package sim is a simulated thermostat board: one thermometer in a room
// that warms while the heat relay is on, cools while the cool relay is on and
// otherwise drifts toward the outside temperature, plus virtual buttons.
//
// It sits behind the same hal interfaces as the Raspberry Pi board, so the
// firmware, its tests and `make demo` run the real control loop without
// hardware. With a time-speed factor a demo shows whole heating and cooling
// cycles in seconds.
package sim

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/thermofleet/thermo/hal"
	"periph.io/x/conn/v3/physic"
)

// Options configures the simulated room. The zero value is a usable room:
// 18 °C inside, 10 °C outside, real time.
type Options struct {
	// Clock drives the room model. Nil: the wall clock sped up by Speed.
	Clock hal.Clock
	// Speed is how many simulated seconds pass per real second when Clock
	// is nil. 0 or 1 means real time. Pass Board.Clock() to the control
	// loop too, so its timers run at the same speed as the room.
	Speed float64

	SensorName       string        // thermometer name; default "room"
	InitialC         float64       // room temperature at start; default 18
	OutsideC         float64       // temperature the room drifts to; default 10
	HeatRateCPerHour float64       // warming the heater adds; default 10
	CoolRateCPerHour float64       // cooling the air conditioner adds; default 10
	TimeConstant     time.Duration // how fast the room leaks toward outside; default 2h
	HumidityPct      float64       // reported relative humidity; 0 reports none
	Fan              bool          // the board has a fan output
}

// DefaultOptions are the values a zero field of Options takes.
var DefaultOptions = Options{
	SensorName:       "room",
	InitialC:         18,
	OutsideC:         10,
	HeatRateCPerHour: 10,
	CoolRateCPerHour: 10,
	TimeConstant:     2 * time.Hour,
}

// ErrClosed is returned by a board used after Close.
var ErrClosed = errors.New("sim: board closed")

// Board is the simulated board. Safe for concurrent use.
type Board struct {
	clock   hal.Clock
	opts    Options
	sensor  *thermometer
	buttons chan hal.ButtonEvent

	mu      sync.Mutex
	tempC   float64
	last    time.Time // time the model was last advanced to
	outputs hal.Outputs
	fault   error
	closed  bool
	history []hal.Outputs // every distinct output state driven, in order
}

// New returns a simulated board with every output off.
func New(opts Options) (*Board, error) {
	d := DefaultOptions
	if opts.SensorName == "" {
		opts.SensorName = d.SensorName
	}
	if opts.InitialC == 0 {
		opts.InitialC = d.InitialC
	}
	if opts.OutsideC == 0 {
		opts.OutsideC = d.OutsideC
	}
	if opts.HeatRateCPerHour == 0 {
		opts.HeatRateCPerHour = d.HeatRateCPerHour
	}
	if opts.CoolRateCPerHour == 0 {
		opts.CoolRateCPerHour = d.CoolRateCPerHour
	}
	if opts.TimeConstant == 0 {
		opts.TimeConstant = d.TimeConstant
	}
	switch {
	case opts.Speed < 0 || math.IsNaN(opts.Speed) || math.IsInf(opts.Speed, 0):
		return nil, fmt.Errorf("sim: speed %v must be a positive number", opts.Speed)
	case opts.TimeConstant < 0:
		return nil, fmt.Errorf("sim: time constant %v must be positive", opts.TimeConstant)
	case opts.HumidityPct < 0 || opts.HumidityPct > 100:
		return nil, fmt.Errorf("sim: humidity %v%% is outside 0..100", opts.HumidityPct)
	}
	clk := opts.Clock
	if clk == nil {
		clk = hal.SystemClock{}
		if opts.Speed != 0 && opts.Speed != 1 {
			clk = ScaledClock(opts.Speed)
		}
	}
	b := &Board{
		clock:   clk,
		opts:    opts,
		buttons: make(chan hal.ButtonEvent, 32),
		tempC:   opts.InitialC,
		last:    clk.Now(),
	}
	b.sensor = &thermometer{b: b, name: opts.SensorName}
	return b, nil
}

// Clock is the clock the room runs on; give it to the control loop.
func (b *Board) Clock() hal.Clock { return b.clock }

// Sensors returns the one thermometer.
func (b *Board) Sensors() []hal.Sensor { return []hal.Sensor{b.sensor} }

// SetOutputs switches the simulated relays, first advancing the room to now
// so the previous state is accounted for up to this instant.
func (b *Board) SetOutputs(o hal.Outputs) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return ErrClosed
	}
	b.advanceLocked()
	if !b.opts.Fan {
		o.Fan = false
	}
	var err error
	if o.Heat && o.Cool {
		o, err = hal.Outputs{}, hal.ErrHeatAndCool
	}
	if o != b.outputs {
		b.history = append(b.history, o)
	}
	b.outputs = o
	return err
}

// Wired reports heat and cool, and fan when Options.Fan is set.
func (b *Board) Wired() hal.Outputs { return hal.Outputs{Heat: true, Cool: true, Fan: b.opts.Fan} }

// Buttons delivers the presses made with Press.
func (b *Board) Buttons() <-chan hal.ButtonEvent { return b.buttons }

// Close switches everything off and closes the button channel.
func (b *Board) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	b.advanceLocked()
	if b.outputs != (hal.Outputs{}) {
		b.history = append(b.history, hal.Outputs{})
	}
	b.outputs = hal.Outputs{}
	b.closed = true
	close(b.buttons)
	return nil
}

// Press simulates a press of a wall button. It reports false when the
// board is closed or 32 presses are already waiting to be read.
func (b *Board) Press(btn hal.Button) bool { return b.press(hal.ButtonEvent{Button: btn}) }

func (b *Board) press(ev hal.ButtonEvent) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return false
	}
	ev.Time = b.clock.Now()
	select {
	case b.buttons <- ev:
		return true
	default:
		return false
	}
}

// SetSensorFault makes every read fail with err (an unplugged sensor);
// nil heals it.
func (b *Board) SetSensorFault(err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fault = err
}

// SetOutsideC changes the outside temperature from now on.
func (b *Board) SetOutsideC(c float64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	b.opts.OutsideC = c
}

// TemperatureC is the true room temperature now.
func (b *Board) TemperatureC() float64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	return b.tempC
}

// Outputs is the relay state as last driven.
func (b *Board) Outputs() hal.Outputs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.outputs
}

// History lists every distinct output state driven since New, oldest
// first; tests and the demo use it to count cycles.
func (b *Board) History() []hal.Outputs {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]hal.Outputs(nil), b.history...)
}

// advanceLocked integrates the room from b.last to now. Between relay
// changes the heat input is constant, so the first-order model
// dT/dt = (Tout-T)/tau + q has the exact solution
// T = Teq + (T0-Teq)·e^(-dt/tau) with Teq = Tout + q·tau: the result does
// not depend on how often it is called.
func (b *Board) advanceLocked() {
	now := b.clock.Now()
	dt := now.Sub(b.last)
	if dt <= 0 {
		return
	}
	b.last = now
	var q float64 // °C per hour
	if b.outputs.Heat {
		q += b.opts.HeatRateCPerHour
	}
	if b.outputs.Cool {
		q -= b.opts.CoolRateCPerHour
	}
	tauH := b.opts.TimeConstant.Hours()
	eq := b.opts.OutsideC + q*tauH
	b.tempC = eq + (b.tempC-eq)*math.Exp(-dt.Hours()/tauH)
}

type thermometer struct {
	b    *Board
	name string
}

func (t *thermometer) Name() string { return t.name }

func (t *thermometer) Read() hal.Reading {
	b := t.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.advanceLocked()
	r := hal.Reading{Sensor: t.name, Time: b.last}
	if b.closed {
		r.Err = ErrClosed
		return r
	}
	if b.fault != nil {
		r.Err = fmt.Errorf("sim sensor %q: %w", t.name, b.fault)
		return r
	}
	// Round like a real 0.01 °C sensor would.
	r.Temperature = hal.Celsius(math.Round(b.tempC*100) / 100)
	if b.opts.HumidityPct > 0 {
		r.HasHumidity = true
		r.Humidity = physic.RelativeHumidity(math.Round(b.opts.HumidityPct * float64(physic.PercentRH)))
	}
	return r
}

// ScaledClock is the wall clock running speed times faster, from now on.
// Timers fire after d/speed of real time.
func ScaledClock(speed float64) hal.Clock { return ScaledClockFrom(time.Now(), speed) }

// ScaledClockFrom is ScaledClock starting at origin: a simulation that
// must cross a given date (a change of the clocks) starts before it.
func ScaledClockFrom(origin time.Time, speed float64) hal.Clock {
	return ScaledClockAt(origin, time.Now(), speed)
}

// ScaledClockAt is the clock that read origin at the real time realOrigin:
// processes given the same three values share one simulated time, so a
// simulated board restarted in a new process carries on where the old one
// left off (the soak's kill -9).
func ScaledClockAt(origin, realOrigin time.Time, speed float64) hal.Clock {
	return &scaledClock{speed: speed, origin: origin, realOrigin: realOrigin}
}

type scaledClock struct {
	speed      float64
	origin     time.Time
	realOrigin time.Time
}

func (s *scaledClock) Now() time.Time {
	el := time.Since(s.realOrigin)
	return s.origin.Add(time.Duration(float64(el) * s.speed))
}

func (s *scaledClock) NewTimer(d time.Duration) hal.Timer {
	return hal.SystemClock{}.NewTimer(time.Duration(float64(d) / s.speed))
}

var (
	_ hal.Board  = (*Board)(nil)
	_ hal.Sensor = (*thermometer)(nil)
)
