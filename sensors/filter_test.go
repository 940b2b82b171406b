package sensors

import (
	"errors"
	"io"
	"log/slog"
	"math"
	"testing"
	"time"

	"github.com/thermofleet/thermo/hal"
	"periph.io/x/conn/v3/physic"
)

// script is a sensor that returns a prepared sequence of readings.
type script struct {
	name  string
	steps []hal.Reading
	n     int
}

func (s *script) Name() string { return s.name }
func (s *script) Read() hal.Reading {
	r := s.steps[s.n]
	s.n++
	return r
}

// at is a reading of c °C taken min minutes after t0.
func at(min float64, c float64) hal.Reading {
	return hal.Reading{Sensor: "s", Time: t0.Add(time.Duration(min * float64(time.Minute))), Temperature: hal.Celsius(c)}
}

func TestFilter(t *testing.T) {
	type exp struct {
		ok bool
		c  float64 // expected output temperature when ok
	}
	hum := at(0, 20)
	hum.HasHumidity, hum.Humidity = true, 120*physic.PercentRH
	press := at(0, 20)
	press.HasPressure, press.Pressure = true, 5*physic.KiloPascal
	tests := []struct {
		name string
		opts FilterOpts
		in   []hal.Reading
		want []exp
	}{
		{"steady room passes", FilterOpts{}, []hal.Reading{at(0, 20), at(1, 20.5), at(2, 21)}, []exp{{true, 20}, {true, 20.5}, {true, 21}}},
		{"out of range", FilterOpts{}, []hal.Reading{at(0, 61), at(1, -31), at(2, 20)}, []exp{{false, 0}, {false, 0}, {true, 20}}},
		{"custom range", FilterOpts{MinC: 0, MaxC: 30}, []hal.Reading{at(0, 31)}, []exp{{false, 0}}},
		{"DS18B20 power-on and failure values", FilterOpts{DS18B20: true}, []hal.Reading{at(0, 85), at(1, -127), at(2, 21)}, []exp{{false, 0}, {false, 0}, {true, 21}}},
		{"85 °C is only special for a DS18B20 (then out of range)", FilterOpts{MaxC: 100, MinC: -30}, []hal.Reading{at(0, 85)}, []exp{{true, 85}}},
		{"spike rejected, not averaged", FilterOpts{Smooth: 2}, []hal.Reading{at(0, 20), at(0.1, 35), at(0.2, 20.2)}, []exp{{true, 20}, {false, 0}, {true, 20.1}}},
		{"slow change within rate", FilterOpts{}, []hal.Reading{at(0, 20), at(5, 29)}, []exp{{true, 20}, {true, 29}}},
		{"new level confirmed by three readings", FilterOpts{}, []hal.Reading{at(0, 20), at(0.1, 30), at(0.2, 30.1), at(0.3, 30.1), at(0.4, 30.2)}, []exp{{true, 20}, {false, 0}, {false, 0}, {true, 30.1}, {true, 30.2}}},
		{"inconsistent jumps never confirm", FilterOpts{}, []hal.Reading{at(0, 20), at(0.1, 30), at(0.2, 40), at(0.3, 30), at(0.4, 20.1)}, []exp{{true, 20}, {false, 0}, {false, 0}, {false, 0}, {true, 20.1}}},
		{"smoothing averages the window", FilterOpts{Smooth: 3}, []hal.Reading{at(0, 20), at(1, 20.3), at(2, 20.6), at(3, 20.9)}, []exp{{true, 20}, {true, 20.15}, {true, 20.3}, {true, 20.6}}},
		{"bad humidity dropped, temperature kept", FilterOpts{}, []hal.Reading{hum}, []exp{{true, 20}}},
		{"bad pressure dropped, temperature kept", FilterOpts{}, []hal.Reading{press}, []exp{{true, 20}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := Filter(&script{name: "s", steps: tc.in}, tc.opts)
			for i, w := range tc.want {
				r, err := read(f)
				if w.ok != (err == nil) || r.OK() != w.ok {
					t.Fatalf("reading %d (%.2f °C): valid %v err %v, want valid %v", i, tc.in[i].Temperature.Celsius(), r.OK(), err, w.ok)
				}
				if !w.ok {
					if !errors.Is(err, ErrImplausible) || r.Temperature != tc.in[i].Temperature {
						t.Fatalf("reading %d: err %v raw %v; want ErrImplausible with the raw value", i, err, r.Temperature)
					}
					continue
				}
				if got := r.Temperature.Celsius(); math.Abs(got-w.c) > 1e-6 {
					t.Fatalf("reading %d: %.4f °C, want %.4f", i, got, w.c)
				}
				if r.HasHumidity || r.HasPressure {
					t.Fatalf("reading %d: implausible humidity/pressure kept: %+v", i, r)
				}
			}
		})
	}
}

func TestFilterPassesErrorsThrough(t *testing.T) {
	bus := errors.New("i2c: remote I/O error")
	f := Filter(&script{name: "s", steps: []hal.Reading{{Sensor: "s", Err: bus}}}, FilterOpts{})
	if r, err := read(f); !errors.Is(err, bus) || r.OK() {
		t.Fatalf("Read = %+v, %v", r, err)
	}
}

func TestFilterOptsValidate(t *testing.T) {
	for _, o := range []FilterOpts{{MinC: 30, MaxC: 10}, {MaxRateCPerMin: -1}, {Smooth: -1}, {Confirm: 1000}} {
		if o.Validate() == nil {
			t.Errorf("%+v accepted", o)
		}
	}
	if err := (FilterOpts{}).Validate(); err != nil {
		t.Error(err)
	}
}

func TestReopen(t *testing.T) {
	absent := errors.New("no ack")
	var opens int
	var openErr error
	dev := &script{name: "room"}
	s := NewReopen("room", func() (hal.Sensor, error) {
		opens++
		if openErr != nil {
			return nil, openErr
		}
		return dev, nil
	}, slog.New(slog.NewTextHandler(io.Discard, nil)))

	// Unplugged at boot: reads fail, every read retries the open.
	openErr = absent
	for i := 0; i < 2; i++ {
		if r, err := read(s); !errors.Is(err, absent) || r.OK() || r.Sensor != "room" {
			t.Fatalf("Read while absent = %+v, %v", r, err)
		}
	}
	if opens != 2 {
		t.Fatalf("%d opens, want 2", opens)
	}
	// Plugged in: opens once and reads.
	openErr = nil
	bus := errors.New("bus error")
	dev.steps = []hal.Reading{at(0, 20), {Err: bus}, {Err: bus}, {Err: bus}, at(1, 21)}
	if _, err := read(s); err != nil {
		t.Fatal(err)
	}
	// Three failures in a row drop the device; the next read reopens it.
	for i := 0; i < 3; i++ {
		if _, err := read(s); !errors.Is(err, bus) {
			t.Fatalf("Read = %v, want bus error", err)
		}
	}
	if opens != 3 {
		t.Fatalf("%d opens before reopen, want 3", opens)
	}
	if r, err := read(s); err != nil || r.Temperature != hal.Celsius(21) {
		t.Fatalf("Read after reopen = %+v, %v", r, err)
	}
	if opens != 4 {
		t.Fatalf("%d opens, want 4 (reopened after 3 failures)", opens)
	}
}
