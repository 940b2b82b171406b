// Package sensors drives the temperature sensors people wire to a
// thermostat (BME280/BMP280, MCP9808, TMP102, AHT20 over I²C, DS18B20 over
// 1-wire) through periph.io's device drivers, and filters out readings no
// room can produce.
//
// Every driver returns a hal.Sensor. Constructors probe the chip and fail
// early, like periph's; Reopen wraps a constructor so a sensor that is
// unplugged at boot or drops off the bus later comes back by itself, and
// Filter rejects implausible values before the control loop sees them.
// Drivers take the narrowest bus interface (i2c.Bus, onewire.Bus, a sysfs
// root), never the board: the hal/rpi board joins them.
package sensors

import (
	"errors"
	"fmt"
	"sync"

	"github.com/thermofleet/thermo/hal"
	"periph.io/x/conn/v3/physic"
)

// Sensor types, as written in the `type:` of a sensor in the config.
const (
	TypeBME280  = "bme280"
	TypeBMP280  = "bmp280"
	TypeMCP9808 = "mcp9808"
	TypeTMP102  = "tmp102"
	TypeAHT20   = "aht20"
	TypeDS18B20 = "ds18b20"
)

// Types lists every supported sensor type.
var Types = []string{TypeBME280, TypeBMP280, TypeMCP9808, TypeTMP102, TypeAHT20, TypeDS18B20}

// ErrAbsent marks a sensor that is not there at all (no device directory,
// no answer on the bus): a wiring or configuration matter, logged once
// rather than at every read.
var ErrAbsent = errors.New("sensor absent")

// Opts are the options every driver takes. The zero value is usable.
type Opts struct {
	// Name is the configured name; default: the sensor type.
	Name string
	// Clock stamps readings; default the wall clock.
	Clock hal.Clock
}

func (o *Opts) resolve(typ string) Opts {
	var r Opts
	if o != nil {
		r = *o
	}
	if r.Name == "" {
		r.Name = typ
	}
	if r.Clock == nil {
		r.Clock = hal.SystemClock{}
	}
	return r
}

// Device adapts a periph environmental sensor to hal.Sensor.
type Device struct {
	name     string
	typ      string
	clock    hal.Clock
	humidity bool // the chip measures humidity
	pressure bool // the chip measures pressure

	mu  sync.Mutex
	dev physic.SenseEnv
}

func newDevice(typ string, o Opts, dev physic.SenseEnv, humidity, pressure bool) *Device {
	return &Device{name: o.Name, typ: typ, clock: o.Clock, dev: dev, humidity: humidity, pressure: pressure}
}

// Name is the configured name.
func (d *Device) Name() string { return d.name }

// Type is the sensor type ("bme280", ...).
func (d *Device) Type() string { return d.typ }

// String names the chip and its bus.
func (d *Device) String() string { return fmt.Sprintf("%s %q (%s)", d.typ, d.name, d.dev) }

// Read takes one measurement.
func (d *Device) Read() hal.Reading {
	d.mu.Lock()
	defer d.mu.Unlock()
	var e physic.Env
	err := d.dev.Sense(&e)
	r := hal.Reading{Sensor: d.name, Time: d.clock.Now()}
	if err != nil {
		r.Err = fmt.Errorf("%s %q: read: %w", d.typ, d.name, err)
		return r
	}
	r.Temperature = e.Temperature
	r.Humidity, r.HasHumidity = e.Humidity, d.humidity
	r.Pressure, r.HasPressure = e.Pressure, d.pressure
	return r
}

// Halt stops the chip (periph's conn.Resource).
func (d *Device) Halt() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.dev.Halt()
}

var _ hal.Sensor = (*Device)(nil)
