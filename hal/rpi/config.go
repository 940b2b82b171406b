package rpi

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/thermofleet/thermo/internal/yamlconf"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/sensors"
	"gopkg.in/yaml.v3"
)

// Config is the `hardware:` section of the firmware's YAML file: the
// wiring of one board.
type Config struct {
	// Sysfs is the root of sysfs, for the kernel's 1-wire devices.
	// Default "/sys"; tests point it at a fixture tree.
	Sysfs string `yaml:"sysfs"`
	// I2CBus is the default I²C bus of the sensors ("1" on a Pi: pins 3
	// and 5); empty means the first bus the host has.
	I2CBus string `yaml:"i2c_bus"`
	// Sensors lists every sensor; control.sensor picks the one that drives
	// the relays (default the first).
	Sensors []SensorConfig `yaml:"sensors"`
	Relays  RelaysConfig   `yaml:"relays"`
	Buttons ButtonsConfig  `yaml:"buttons"`

	lines yamlconf.Lines
}

// SensorConfig is one sensor.
type SensorConfig struct {
	Name string `yaml:"name"` // unique; default the type
	Type string `yaml:"type"` // bme280, bmp280, mcp9808, tmp102, aht20, ds18b20
	// Address on the I²C bus; default the chip's usual one (0x76, 0x18,
	// 0x48, 0x38).
	Address uint16 `yaml:"address"`
	// Bus is the I²C bus (default i2c_bus) or, for a DS18B20 with via
	// onewire, the periph 1-wire bus (default the first).
	Bus string `yaml:"bus"`
	// Via is how a DS18B20 is read: "sysfs" (default; the kernel's w1-gpio
	// driver) or "onewire" (a periph 1-wire bus such as a DS2482).
	Via string `yaml:"via"`
	// ID of a DS18B20: "28-0316a2791eff" as in /sys/bus/w1/devices.
	// Empty: the only DS18B20 there is.
	ID string `yaml:"id"`
	// ResolutionBits of a DS18B20 read via onewire, 9..12 (default 11:
	// 0.125 °C in 375 ms).
	ResolutionBits int `yaml:"resolution_bits"`
	// Filter tunes the plausibility filter.
	Filter FilterConfig `yaml:"filter"`
}

// FilterConfig maps to sensors.FilterOpts; zero values take its defaults.
type FilterConfig struct {
	MinC           float64 `yaml:"min_c"`
	MaxC           float64 `yaml:"max_c"`
	MaxRateCPerMin float64 `yaml:"max_rate_c_per_min"`
	Confirm        int     `yaml:"confirm"`
	Smooth         int     `yaml:"smooth"`
}

// RelaysConfig wires the outputs; an absent relay is not fitted.
type RelaysConfig struct {
	Heat *RelayConfig `yaml:"heat"`
	Cool *RelayConfig `yaml:"cool"`
	Fan  *RelayConfig `yaml:"fan"`
}

// RelayConfig is one relay output.
type RelayConfig struct {
	Pin string `yaml:"pin"` // GPIO name: "GPIO17"
	// ActiveLow: the relay closes when the pin is low, as on most cheap
	// opto-isolated relay boards.
	ActiveLow bool `yaml:"active_low"`
}

// ButtonsConfig wires the wall buttons; each is optional.
type ButtonsConfig struct {
	Up   *ButtonConfig `yaml:"up"`
	Down *ButtonConfig `yaml:"down"`
	Mode *ButtonConfig `yaml:"mode"`
	// Debounce is how long a contact must be quiet before its level
	// counts. Default 30ms.
	Debounce time.Duration `yaml:"debounce"`
	// LongPress is how long the mode button is held for a long press,
	// which cycles the presets (a short press cycles the modes). Default 1s.
	LongPress time.Duration `yaml:"long_press"`
}

// ButtonConfig is one push button.
type ButtonConfig struct {
	Pin string `yaml:"pin"`
	// Pull is the internal resistor: "up" (default: button to ground),
	// "down" (button to 3.3 V) or "none" (external resistor).
	Pull string `yaml:"pull"`
	// Pressed is the level of a pressed button, "low" or "high"; default
	// low with pull up or none, high with pull down.
	Pressed string `yaml:"pressed"`
}

// Defaults.
const (
	DefaultSysfs          = "/sys"
	DefaultDebounce       = 30 * time.Millisecond
	DefaultLongPress      = time.Second
	DefaultResolutionBits = 11
)

// UnmarshalYAML decodes the section, refusing unknown keys and keeping
// the line of every value for error messages.
func (c *Config) UnmarshalYAML(n *yaml.Node) error {
	type plain Config
	var p plain
	if err := yamlconf.CheckKnown("hardware", n, &p); err != nil {
		return err
	}
	if err := n.Decode(&p); err != nil {
		return fmt.Errorf("hardware: %w", err)
	}
	*c = Config(p)
	c.lines = yamlconf.Index("hardware", n)
	return nil
}

// withDefaults fills every default in.
func (c Config) withDefaults() Config {
	if c.Sysfs == "" {
		c.Sysfs = DefaultSysfs
	}
	if c.Buttons.Debounce == 0 {
		c.Buttons.Debounce = DefaultDebounce
	}
	if c.Buttons.LongPress == 0 {
		c.Buttons.LongPress = DefaultLongPress
	}
	s := make([]SensorConfig, len(c.Sensors))
	for i, sc := range c.Sensors {
		if sc.Name == "" {
			sc.Name = sc.Type
		}
		if sc.Address == 0 {
			sc.Address = sensors.DefaultAddr(sc.Type)
		}
		if sc.Type == sensors.TypeDS18B20 {
			if sc.Via == "" {
				sc.Via = ViaSysfs
			}
			if sc.ResolutionBits == 0 {
				sc.ResolutionBits = DefaultResolutionBits
			}
		} else if sc.Bus == "" {
			sc.Bus = c.I2CBus
		}
		s[i] = sc
	}
	c.Sensors = s
	for _, bp := range []**ButtonConfig{&c.Buttons.Up, &c.Buttons.Down, &c.Buttons.Mode} {
		if *bp == nil {
			continue
		}
		b := new(ButtonConfig)
		*b = **bp // a copy: defaults must not write into the caller's config
		*bp = b
		if b.Pull == "" {
			b.Pull = "up"
		}
		if b.Pressed == "" {
			b.Pressed = "low"
			if b.Pull == "down" {
				b.Pressed = "high"
			}
		}
	}
	return c
}

// How a DS18B20 is read.
const (
	ViaSysfs   = "sysfs"
	ViaOneWire = "onewire"
)

var w1ID = regexp.MustCompile(`^28-[0-9a-f]{12}$`)

// Validate checks everything that can be checked without hardware; Open
// then checks that each pin and bus exists. Errors read
// "line N: hardware.relays.heat.pin: reason".
func (c Config) Validate() error {
	l := c.lines
	if _, explicit := l.Exact("buttons.debounce"); explicit && c.Buttons.Debounce == 0 {
		return l.Errorf("buttons.debounce", "must be greater than zero")
	}
	c = c.withDefaults()
	if len(c.Sensors) == 0 {
		return l.Errorf("sensors", "no sensor configured: the thermostat needs at least one")
	}
	names := map[string]int{}
	for i, s := range c.Sensors {
		p := fmt.Sprintf("sensors[%d]", i)
		if !known(s.Type) {
			return l.Errorf(p+".type", "unknown sensor type %q (known: %s)", s.Type, strings.Join(sensors.Types, ", "))
		}
		if err := protocol.CheckSensorName(s.Name); err != nil {
			return l.Errorf(p+".name", "%v", err)
		}
		if j, dup := names[s.Name]; dup {
			return l.Errorf(p+".name", "name %q is already used by sensors[%d]", s.Name, j)
		}
		names[s.Name] = i
		if err := validAddr(s); err != nil {
			return l.Errorf(p+".address", "%v", err)
		}
		if s.Type != sensors.TypeDS18B20 {
			for k, set := range map[string]bool{"via": s.Via != "", "id": s.ID != "", "resolution_bits": s.ResolutionBits != 0} {
				if set {
					return l.Errorf(p+"."+k, "only a ds18b20 has %s", k)
				}
			}
		} else {
			switch {
			case s.Via != ViaSysfs && s.Via != ViaOneWire:
				return l.Errorf(p+".via", "%q is neither %q nor %q", s.Via, ViaSysfs, ViaOneWire)
			case s.ID != "" && !w1ID.MatchString(s.ID):
				return l.Errorf(p+".id", "%q is not a DS18B20 id like 28-0316a2791eff (see ls /sys/bus/w1/devices)", s.ID)
			case s.ResolutionBits < 9 || s.ResolutionBits > 12:
				return l.Errorf(p+".resolution_bits", "%d is outside 9..12", s.ResolutionBits)
			case s.Via == ViaSysfs && s.Bus != "":
				return l.Errorf(p+".bus", "a ds18b20 read via sysfs has no bus; its id selects it")
			case s.Via == ViaSysfs && s.ResolutionBits != DefaultResolutionBits:
				if _, explicit := l.Exact(p + ".resolution_bits"); explicit {
					return l.Errorf(p+".resolution_bits", "the kernel sets the resolution of a ds18b20 read via sysfs")
				}
			}
		}
		if err := s.Filter.opts(false).Validate(); err != nil {
			return l.Errorf(p+".filter", "%v", err)
		}
	}

	pins := map[string]string{} // pin name to the path that uses it
	usePin := func(path, pin string) error {
		if strings.TrimSpace(pin) == "" {
			return l.Errorf(path, "no pin given (a GPIO name such as GPIO17)")
		}
		if other, dup := pins[pin]; dup {
			return l.Errorf(path, "pin %s is already used by hardware.%s", pin, other)
		}
		pins[pin] = path
		return nil
	}
	r := c.Relays
	if r.Heat == nil && r.Cool == nil {
		return l.Errorf("relays", "neither a heat nor a cool relay is configured")
	}
	for _, x := range []struct {
		name string
		r    *RelayConfig
	}{{"heat", r.Heat}, {"cool", r.Cool}, {"fan", r.Fan}} {
		if x.r == nil {
			continue
		}
		if err := usePin("relays."+x.name+".pin", x.r.Pin); err != nil {
			return err
		}
	}
	b := c.Buttons
	for _, x := range []struct {
		name string
		b    *ButtonConfig
	}{{"up", b.Up}, {"down", b.Down}, {"mode", b.Mode}} {
		if x.b == nil {
			continue
		}
		p := "buttons." + x.name
		if err := usePin(p+".pin", x.b.Pin); err != nil {
			return err
		}
		if _, ok := pulls[x.b.Pull]; !ok {
			return l.Errorf(p+".pull", "%q is not up, down or none", x.b.Pull)
		}
		if x.b.Pressed != "low" && x.b.Pressed != "high" {
			return l.Errorf(p+".pressed", "%q is not low or high", x.b.Pressed)
		}
	}
	if b.Debounce < time.Millisecond || b.Debounce > time.Second {
		return l.Errorf("buttons.debounce", "%v is outside 1ms..1s", b.Debounce)
	}
	if b.LongPress != 0 && (b.LongPress <= b.Debounce || b.LongPress > 10*time.Second) {
		return l.Errorf("buttons.long_press", "%v must be longer than debounce (%v) and at most 10s", b.LongPress, b.Debounce)
	}
	return nil
}

func known(typ string) bool {
	for _, t := range sensors.Types {
		if t == typ {
			return true
		}
	}
	return false
}

func validAddr(s SensorConfig) error {
	a := s.Address
	ok := true
	switch s.Type {
	case sensors.TypeBME280, sensors.TypeBMP280:
		ok = a == 0x76 || a == 0x77
	case sensors.TypeMCP9808:
		ok = a >= 0x18 && a <= 0x1f
	case sensors.TypeTMP102:
		ok = a >= 0x48 && a <= 0x4b
	case sensors.TypeAHT20:
		ok = a == sensors.AddrAHT20
	case sensors.TypeDS18B20:
		if a != 0 {
			return fmt.Errorf("a ds18b20 has no I²C address; use id")
		}
	}
	if !ok {
		return fmt.Errorf("%#x is not an address a %s can have", a, s.Type)
	}
	return nil
}

func (f FilterConfig) opts(ds18b20 bool) sensors.FilterOpts {
	return sensors.FilterOpts{
		MinC: f.MinC, MaxC: f.MaxC, MaxRateCPerMin: f.MaxRateCPerMin,
		Confirm: f.Confirm, Smooth: f.Smooth, DS18B20: ds18b20,
	}
}
