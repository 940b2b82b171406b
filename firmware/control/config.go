package control

import (
	"fmt"
	"math"
	"time"

	"github.com/thermofleet/thermo/internal/yamlconf"
	"gopkg.in/yaml.v3"
)

// Config is the `control:` section of the firmware's YAML file. A zero
// field takes its value from DefaultConfig; Validate reports the first bad
// value with its line.
type Config struct {
	// Sensor names the sensor that drives the relays; the others are only
	// reported. Empty: the board's first sensor.
	Sensor string `yaml:"sensor"`
	// Interval between sensor reads and control decisions.
	Interval time.Duration `yaml:"interval"`
	// BandC is the full width of the hysteresis band in °C: in heat mode
	// the heat goes on at setpoint-band/2 and off at setpoint+band/2.
	BandC float64 `yaml:"band_c"`
	// AutoDeadbandC separates the heating and cooling targets in auto
	// mode (heat around setpoint-deadband/2, cool around setpoint+deadband/2)
	// so the two never chase each other. At least BandC.
	AutoDeadbandC float64 `yaml:"auto_deadband_c"`
	// Heat and Cool protect the boiler and the compressor.
	Heat OutputConfig `yaml:"heat"`
	Cool OutputConfig `yaml:"cool"`
	// FanWithHeat runs the fan output while heating too (it always runs
	// with cooling).
	FanWithHeat bool `yaml:"fan_with_heat"`
	// SensorTimeout is how long the loop goes on with the last valid
	// reading; after it, every output goes off and sensor_ok turns false
	// until a valid reading arrives.
	SensorTimeout time.Duration `yaml:"sensor_timeout"`
	// Frost heats below a floor in every mode, off included.
	Frost FrostConfig `yaml:"frost"`
	// ButtonStepC is the setpoint change of one press of up or down.
	ButtonStepC float64 `yaml:"button_step_c"`
	// ButtonWindow: presses closer together than this form one burst and
	// one device event, sent when the window after the last press ends.
	ButtonWindow time.Duration `yaml:"button_window"`

	lines yamlconf.Lines
}

// OutputConfig limits how one relay may switch.
type OutputConfig struct {
	// MinOn: once on, the output stays on at least this long unless a
	// safety rule (sensor failure, mode change, max run) turns it off.
	MinOn time.Duration `yaml:"min_on"`
	// MinOff: once off, the output stays off at least this long, without
	// exception. Counted from loop start too, so a crash loop cannot
	// short-cycle a compressor.
	MinOff time.Duration `yaml:"min_off"`
	// MaxRun: an output on this long without a break is switched off (and
	// then rests MinOff), in case a sensor reads wrong while looking fine.
	MaxRun time.Duration `yaml:"max_run"`
}

// FrostConfig is the frost protection of an empty house.
type FrostConfig struct {
	Enabled *bool   `yaml:"enabled"` // nil: on
	FloorC  float64 `yaml:"floor_c"` // heat on at or below this, off at floor+band
}

// DefaultConfig holds every default. Frost protection is on at 5 °C.
func DefaultConfig() Config {
	on := true
	return Config{
		Interval:      5 * time.Second,
		BandC:         1.0,
		AutoDeadbandC: 2.0,
		Heat:          OutputConfig{MinOn: 2 * time.Minute, MinOff: 2 * time.Minute, MaxRun: 6 * time.Hour},
		Cool:          OutputConfig{MinOn: 3 * time.Minute, MinOff: 5 * time.Minute, MaxRun: 6 * time.Hour},
		SensorTimeout: 30 * time.Second,
		Frost:         FrostConfig{Enabled: &on, FloorC: 5},
		ButtonStepC:   0.5,
		ButtonWindow:  1500 * time.Millisecond,
	}
}

// UnmarshalYAML decodes the section, refusing unknown keys and
// remembering the line of every value for Validate's messages.
func (c *Config) UnmarshalYAML(n *yaml.Node) error {
	type plain Config
	var p plain
	if err := yamlconf.CheckKnown("control", n, &p); err != nil {
		return err
	}
	if err := n.Decode(&p); err != nil {
		return fmt.Errorf("control: %w", err)
	}
	*c = Config(p)
	c.lines = yamlconf.Index("control", n)
	return nil
}

// withDefaults returns c with every zero field set from DefaultConfig.
// Durations given explicitly as 0 for MinOn/MinOff cannot be told from
// absent ones, so they take the default too; use "1ms" to mean "almost no
// minimum".
func (c Config) withDefaults() Config {
	d := DefaultConfig()
	setD := func(v *time.Duration, def time.Duration) {
		if *v == 0 {
			*v = def
		}
	}
	setF := func(v *float64, def float64) {
		if *v == 0 {
			*v = def
		}
	}
	setD(&c.Interval, d.Interval)
	setF(&c.BandC, d.BandC)
	setF(&c.AutoDeadbandC, math.Max(d.AutoDeadbandC, c.BandC))
	for _, p := range []struct{ v, d *OutputConfig }{{&c.Heat, &d.Heat}, {&c.Cool, &d.Cool}} {
		setD(&p.v.MinOn, p.d.MinOn)
		setD(&p.v.MinOff, p.d.MinOff)
		setD(&p.v.MaxRun, p.d.MaxRun)
	}
	setD(&c.SensorTimeout, d.SensorTimeout)
	if c.Frost.Enabled == nil {
		c.Frost.Enabled = d.Frost.Enabled
	}
	setF(&c.Frost.FloorC, d.Frost.FloorC)
	setF(&c.ButtonStepC, d.ButtonStepC)
	setD(&c.ButtonWindow, d.ButtonWindow)
	return c
}

// Validate reports the first value that cannot run a heater safely, as
// "line N: control.key: reason" when the config came from YAML. Zero
// values mean the default and are valid, except a band given as 0 in the
// file.
func (c Config) Validate() error {
	// An explicit zero in the file is a mistake, not "use the default".
	for _, k := range []string{"band_c", "auto_deadband_c", "button_step_c", "interval", "sensor_timeout", "button_window", "heat.max_run", "cool.max_run", "frost.floor_c"} {
		if _, explicit := c.lines.Exact(k); explicit && c.isZero(k) {
			return c.lines.Errorf(k, "must be greater than zero")
		}
	}
	c = c.withDefaults()
	l := c.lines
	finite := func(f float64) bool { return !math.IsNaN(f) && !math.IsInf(f, 0) }
	switch {
	case c.Interval < 100*time.Millisecond || c.Interval > 10*time.Minute:
		return l.Errorf("interval", "%v is outside 100ms..10m", c.Interval)
	case !finite(c.BandC) || c.BandC <= 0 || c.BandC > 5:
		return l.Errorf("band_c", "%v must be greater than 0 and at most 5 °C", c.BandC)
	case !finite(c.AutoDeadbandC) || c.AutoDeadbandC < c.BandC || c.AutoDeadbandC > 10:
		return l.Errorf("auto_deadband_c", "%v must be at least band_c (%v) and at most 10 °C, or heat and cool would chase each other", c.AutoDeadbandC, c.BandC)
	case c.SensorTimeout < c.Interval:
		return l.Errorf("sensor_timeout", "%v is shorter than interval %v: every missed read would stop the heating", c.SensorTimeout, c.Interval)
	case !finite(c.Frost.FloorC) || c.Frost.FloorC < 1 || c.Frost.FloorC > 15:
		return l.Errorf("frost.floor_c", "%v is outside 1..15 °C", c.Frost.FloorC)
	case !finite(c.ButtonStepC) || c.ButtonStepC < 0.1 || c.ButtonStepC > 5:
		return l.Errorf("button_step_c", "%v is outside 0.1..5 °C", c.ButtonStepC)
	case c.ButtonWindow < 50*time.Millisecond || c.ButtonWindow > 30*time.Second:
		return l.Errorf("button_window", "%v is outside 50ms..30s", c.ButtonWindow)
	}
	for _, o := range []struct {
		name string
		c    OutputConfig
	}{{"heat", c.Heat}, {"cool", c.Cool}} {
		switch {
		case o.c.MinOn < 0:
			return l.Errorf(o.name+".min_on", "%v is negative", o.c.MinOn)
		case o.c.MinOff < 0:
			return l.Errorf(o.name+".min_off", "%v is negative", o.c.MinOff)
		case o.c.MaxRun <= o.c.MinOn:
			return l.Errorf(o.name+".max_run", "%v must be longer than min_on (%v)", o.c.MaxRun, o.c.MinOn)
		}
	}
	return nil
}

func (c Config) isZero(k string) bool {
	switch k {
	case "band_c":
		return c.BandC == 0
	case "auto_deadband_c":
		return c.AutoDeadbandC == 0
	case "button_step_c":
		return c.ButtonStepC == 0
	case "interval":
		return c.Interval == 0
	case "sensor_timeout":
		return c.SensorTimeout == 0
	case "button_window":
		return c.ButtonWindow == 0
	case "heat.max_run":
		return c.Heat.MaxRun == 0
	case "cool.max_run":
		return c.Cool.MaxRun == 0
	case "frost.floor_c":
		return c.Frost.FloorC == 0
	}
	return false
}
