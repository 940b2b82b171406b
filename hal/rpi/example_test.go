package rpi

import (
	"os"
	"testing"

	"github.com/thermofleet/thermo/firmware/control"
	"gopkg.in/yaml.v3"
)

// The example config in the repository must stay valid, with the same
// values as the defaults where it says so.
func TestExampleConfig(t *testing.T) {
	b, err := os.ReadFile("../../firmware/thermostat.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Hardware Config         `yaml:"hardware"`
		Control  control.Config `yaml:"control"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	if err := f.Hardware.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := f.Control.Validate(); err != nil {
		t.Fatal(err)
	}
	h := f.Hardware.withDefaults()
	if len(h.Sensors) != 2 || h.Sensors[0].Type != "bme280" || h.Sensors[1].Via != ViaSysfs ||
		h.Relays.Heat.Pin != "GPIO17" || h.Relays.Cool.Pin != "GPIO27" || h.Buttons.Mode.Pin != "GPIO13" {
		t.Fatalf("example hardware %+v", h)
	}
	d := control.DefaultConfig()
	c := f.Control
	if c.Interval != d.Interval || c.BandC != d.BandC || c.Heat != d.Heat || c.Cool != d.Cool ||
		c.SensorTimeout != d.SensorTimeout || c.ButtonStepC != d.ButtonStepC || c.ButtonWindow != d.ButtonWindow ||
		c.Frost.FloorC != d.Frost.FloorC || !*c.Frost.Enabled {
		t.Fatalf("example control values differ from the defaults it claims:\n%+v\n%+v", c, d)
	}
}
