package sensors

import (
	"errors"
	"fmt"
	"math"
	"sync"

	"github.com/thermofleet/thermo/hal"
	"periph.io/x/conn/v3/physic"
)

// ErrImplausible marks a reading a room cannot produce; it is rejected,
// never averaged in.
var ErrImplausible = errors.New("implausible reading")

// FilterOpts tunes the plausibility filter. Zero fields take DefaultFilter.
type FilterOpts struct {
	// MinC and MaxC bound a plausible indoor temperature.
	MinC, MaxC float64
	// MaxRateCPerMin is how fast a room can change; a jump beyond it (plus
	// 0.5 °C of sensor noise) is rejected.
	MaxRateCPerMin float64
	// Confirm is how many consecutive rejected readings, consistent with
	// each other, establish a new level (the sensor really was moved).
	Confirm int
	// Smooth averages the last Smooth accepted readings; 0 or 1: off.
	Smooth int
	// DS18B20 rejects the values the DS18B20 reports when it did not
	// convert: 85.0 °C (power-on value) and -127 °C.
	DS18B20 bool
}

// DefaultFilter: -30..60 °C, 2 °C per minute, 3 readings to confirm a
// jump, no smoothing.
var DefaultFilter = FilterOpts{MinC: -30, MaxC: 60, MaxRateCPerMin: 2, Confirm: 3}

const noiseC = 0.5 // allowance for quantisation and noise between two readings

// Filter wraps s so that implausible readings come back invalid, with an
// error wrapping ErrImplausible and the raw value kept for diagnostics.
func Filter(s hal.Sensor, o FilterOpts) *Filtered {
	d := DefaultFilter
	if o.MinC == 0 && o.MaxC == 0 {
		o.MinC, o.MaxC = d.MinC, d.MaxC
	}
	if o.MaxRateCPerMin == 0 {
		o.MaxRateCPerMin = d.MaxRateCPerMin
	}
	if o.Confirm == 0 {
		o.Confirm = d.Confirm
	}
	return &Filtered{s: s, o: o}
}

// Validate reports options that would reject every reading.
func (o FilterOpts) Validate() error {
	switch {
	case math.IsNaN(o.MinC) || math.IsNaN(o.MaxC) || (o.MinC != 0 || o.MaxC != 0) && o.MinC >= o.MaxC:
		return fmt.Errorf("min_c %v must be below max_c %v", o.MinC, o.MaxC)
	case o.MaxRateCPerMin < 0 || math.IsNaN(o.MaxRateCPerMin):
		return fmt.Errorf("max_rate_c_per_min %v must be positive", o.MaxRateCPerMin)
	case o.Confirm < 0 || o.Confirm > 100:
		return fmt.Errorf("confirm %d is outside 1..100", o.Confirm)
	case o.Smooth < 0 || o.Smooth > 100:
		return fmt.Errorf("smooth %d is outside 0..100", o.Smooth)
	}
	return nil
}

// Filtered is a sensor behind the plausibility filter.
type Filtered struct {
	s hal.Sensor
	o FilterOpts

	mu      sync.Mutex
	last    *hal.Reading         // last accepted (raw) reading
	pending []hal.Reading        // consecutive rejected jumps, consistent with each other
	window  []physic.Temperature // last accepted raw temperatures, for smoothing
}

// Name is the wrapped sensor's name.
func (f *Filtered) Name() string { return f.s.Name() }

// Unwrap returns the wrapped sensor.
func (f *Filtered) Unwrap() hal.Sensor { return f.s }

// Read reads the wrapped sensor and applies the filter.
func (f *Filtered) Read() hal.Reading {
	r := f.s.Read()
	if r.Err != nil {
		return r
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	// Humidity and pressure out of range are dropped, not the temperature.
	if r.HasHumidity && (r.Humidity < 0 || r.Humidity > 100*physic.PercentRH) {
		r.HasHumidity = false
	}
	if r.HasPressure && (r.Pressure < 30*physic.KiloPascal || r.Pressure > 110*physic.KiloPascal) {
		r.HasPressure = false
	}
	c := r.Temperature.Celsius()
	reject := func(format string, args ...any) hal.Reading {
		r.Err = fmt.Errorf("%s: %w: %s", f.s.Name(), ErrImplausible, fmt.Sprintf(format, args...))
		return r
	}
	switch {
	case f.o.DS18B20 && r.Temperature == physic.ZeroCelsius+85*physic.Celsius:
		return reject("85.0 °C is the DS18B20 power-on value: the conversion did not run (power or pull-up?)")
	case f.o.DS18B20 && r.Temperature == physic.ZeroCelsius-127*physic.Celsius:
		return reject("-127 °C is the DS18B20 read-failure value")
	case math.IsNaN(c) || c < f.o.MinC || c > f.o.MaxC:
		return reject("%.2f °C is outside %v..%v °C", c, f.o.MinC, f.o.MaxC)
	}
	if f.last != nil && !f.withinRate(*f.last, r) {
		// A jump. Accept it only when Confirm readings in a row agree on
		// the new level.
		if n := len(f.pending); n > 0 && !f.withinRate(f.pending[n-1], r) {
			f.pending = f.pending[:0]
		}
		f.pending = append(f.pending, r)
		if len(f.pending) < f.o.Confirm {
			return reject("%.2f °C jumped from %.2f °C in %v, faster than %v °C/min", c, f.last.Temperature.Celsius(), r.Time.Sub(f.last.Time), f.o.MaxRateCPerMin)
		}
		f.window = f.window[:0] // a new level: do not average with the old one
	}
	f.pending = f.pending[:0]
	last := r
	f.last = &last
	if f.o.Smooth > 1 {
		f.window = append(f.window, r.Temperature)
		if len(f.window) > f.o.Smooth {
			f.window = f.window[1:]
		}
		var sum physic.Temperature
		for _, t := range f.window {
			sum += t
		}
		r.Temperature = sum / physic.Temperature(len(f.window))
	}
	return r
}

func (f *Filtered) withinRate(a, b hal.Reading) bool {
	dt := b.Time.Sub(a.Time).Minutes()
	if dt < 0 {
		dt = -dt
	}
	return math.Abs(b.Temperature.Celsius()-a.Temperature.Celsius()) <= f.o.MaxRateCPerMin*dt+noiseC
}

var _ hal.Sensor = (*Filtered)(nil)
