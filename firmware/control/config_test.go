package control

import (
	"strings"
	"testing"
	"time"

	"gopkg.in/yaml.v3"
)

// file mirrors how the firmware embeds the section in its YAML file.
type file struct {
	Control Config `yaml:"control"`
}

func TestConfigYAML(t *testing.T) {
	src := `
control:
  sensor: room
  band_c: 0.6
  heat:
    min_on: 3m
    max_run: 4h
  frost:
    enabled: false
`
	var f file
	if err := yaml.Unmarshal([]byte(src), &f); err != nil {
		t.Fatal(err)
	}
	if err := f.Control.Validate(); err != nil {
		t.Fatal(err)
	}
	c := f.Control.withDefaults()
	d := DefaultConfig()
	if c.Sensor != "room" || c.BandC != 0.6 || c.Heat.MinOn != 3*time.Minute || c.Heat.MaxRun != 4*time.Hour ||
		c.Heat.MinOff != d.Heat.MinOff || c.Cool != d.Cool || *c.Frost.Enabled || c.Frost.FloorC != 5 ||
		c.ButtonStepC != 0.5 || c.Interval != d.Interval {
		t.Fatalf("decoded %+v", c)
	}
	if err := (Config{}).Validate(); err != nil {
		t.Fatalf("zero Config (all defaults) invalid: %v", err)
	}
}

func TestConfigErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"band of zero", "control:\n  band_c: 0\n", "line 2: control.band_c: must be greater than zero"},
		{"negative band", "control:\n  interval: 5s\n  band_c: -1\n", "line 3: control.band_c:"},
		{"unknown key", "control:\n  heat:\n    min_of: 2m\n", `line 3: control.heat.min_of: unknown key "min_of"`},
		{"bad duration", "control:\n  interval: soon\n", "line 2"},
		{"deadband below band", "control:\n  band_c: 2\n  auto_deadband_c: 1\n", "line 3: control.auto_deadband_c:"},
		{"max run not above min on", "control:\n  cool:\n    min_on: 10m\n    max_run: 5m\n", "line 4: control.cool.max_run:"},
		{"timeout below interval", "control:\n  interval: 1m\n  sensor_timeout: 30s\n", "line 3: control.sensor_timeout:"},
		{"frost floor", "control:\n  frost:\n    floor_c: 30\n", "line 3: control.frost.floor_c:"},
		{"button step", "control:\n  button_step_c: 9\n", "line 2: control.button_step_c:"},
		{"negative min off", "control:\n  heat:\n    min_off: -1s\n", "line 3: control.heat.min_off:"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f file
			err := yaml.Unmarshal([]byte(tc.src), &f)
			if err == nil {
				err = f.Control.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want it to contain %q", err, tc.want)
			}
		})
	}
}
