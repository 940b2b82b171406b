// Package hal holds the hardware interfaces the thermostat is written
// against: sensors that produce readings with units, relay outputs and wall
// buttons, plus the clock every timer goes through.
//
// It is the interface layer of a periph-shaped design: board
// implementations (hal/sim, hal/rpi) and sensor drivers (sensors) depend on
// it, never the other way round, and the control loop sees only these
// types. That is what lets the same loop run on a simulated room in tests and
// demos and on a Raspberry Pi in a house.
package hal

import (
	"errors"
	"fmt"
	"math"
	"time"

	"periph.io/x/conn/v3/physic"
)

// Reading is one measurement of one sensor.
//
// Units are periph's fixed-point types so nobody downstream guesses whether
// a float is Celsius or Fahrenheit; convert once at the edge (telemetry)
// with Temperature.Celsius().
type Reading struct {
	Sensor      string                  // configured sensor name
	Time        time.Time               // when it was taken
	Err         error                   // why the reading is not valid (read failed or value rejected); nil when it is
	Temperature physic.Temperature      // raw value even when rejected, 0 when never read
	Humidity    physic.RelativeHumidity // meaningful only when HasHumidity
	HasHumidity bool
	Pressure    physic.Pressure // meaningful only when HasPressure
	HasPressure bool
}

// OK reports whether the reading is valid.
func (r Reading) OK() bool { return r.Err == nil }

// Sensor is one configured environmental sensor.
type Sensor interface {
	// Name is the configured name, unique on a board ("room", "floor").
	Name() string
	// Read takes a measurement. A reading whose Err is set is not valid;
	// it may still carry the raw (rejected) value for diagnostics.
	Read() Reading
}

// Outputs is the state of every relay output of a board. The zero value is
// the safe state: everything off.
type Outputs struct {
	Heat bool
	Cool bool
	Fan  bool
}

// String renders the outputs for logs: "heat=on cool=off fan=off".
func (o Outputs) String() string {
	f := func(b bool) string {
		if b {
			return "on"
		}
		return "off"
	}
	return fmt.Sprintf("heat=%s cool=%s fan=%s", f(o.Heat), f(o.Cool), f(o.Fan))
}

// ErrHeatAndCool is returned by Board.SetOutputs when asked to switch heat
// and cool on together; boards then switch both off. The control loop never
// asks for it: this is the last line of defence against a bug above.
var ErrHeatAndCool = errors.New("refusing to switch heat and cool on together")

// Button names a wall button.
type Button int

// The buttons a thermostat has.
const (
	ButtonUp   Button = iota + 1 // setpoint up by one step
	ButtonDown                   // setpoint down by one step
	ButtonMode                   // next mode: off, heat, cool, auto
)

func (b Button) String() string {
	switch b {
	case ButtonUp:
		return "up"
	case ButtonDown:
		return "down"
	case ButtonMode:
		return "mode"
	}
	return fmt.Sprintf("button(%d)", int(b))
}

// ButtonEvent is one press of a button, already free of contact bounce.
type ButtonEvent struct {
	Button Button
	Time   time.Time
	// Long is a press held for the board's long-press time (the mode
	// button's: it cycles the presets instead of the modes).
	Long bool
}

// Board is a thermostat's hardware: sensors, relays and buttons.
//
// Implementations switch every output off (the safe state) when they are
// opened and when they are closed, so a crash followed by a restart, or a
// clean stop, never leaves a heater running.
type Board interface {
	// Sensors lists the configured sensors, in configuration order.
	Sensors() []Sensor
	// SetOutputs drives every relay. Outputs the board does not have (a fan)
	// are ignored. Heat and cool together is refused with ErrHeatAndCool and
	// both are switched off. On error the board has tried to reach the safe
	// state.
	SetOutputs(Outputs) error
	// Wired reports which outputs the board has (a heat-only house has no
	// cool relay); the control loop never drives the others.
	Wired() Outputs
	// Buttons delivers debounced presses; nil when the board has none. It is
	// closed when the board is closed.
	Buttons() <-chan ButtonEvent
	// Close switches every output off, stops the button watchers and
	// releases the hardware.
	Close() error
}

// Clock is the source of time for everything with a timer (control loop
// tick, minimum on/off times, button debounce, simulated room) so tests
// drive time instead of sleeping.
type Clock interface {
	Now() time.Time
	// NewTimer returns a timer that fires once, d from now.
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer a Clock must provide.
type Timer interface {
	C() <-chan time.Time
	// Stop prevents the timer from firing; it reports whether it did.
	Stop() bool
}

// SystemClock is the wall clock.
type SystemClock struct{}

// Now returns time.Now().
func (SystemClock) Now() time.Time { return time.Now() }

// NewTimer wraps time.NewTimer.
func (SystemClock) NewTimer(d time.Duration) Timer { return sysTimer{time.NewTimer(d)} }

type sysTimer struct{ t *time.Timer }

func (s sysTimer) C() <-chan time.Time { return s.t.C }
func (s sysTimer) Stop() bool          { return s.t.Stop() }

// Celsius converts degrees Celsius to a physic.Temperature. It is the one
// place configuration floats become units.
func Celsius(c float64) physic.Temperature {
	return physic.ZeroCelsius + physic.Temperature(math.Round(c*float64(physic.Celsius)))
}

var _ Clock = SystemClock{}
