package rpi

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestConfigErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, src, want string
	}{
		{"unknown sensor type", `
hardware:
  sensors:
    - name: room
      type: bme680
  relays: {heat: {pin: GPIO17}}`, `line 5: hardware.sensors[0].type: unknown sensor type "bme680" (known: bme280, bmp280, mcp9808, tmp102, aht20, ds18b20)`},
		{"no sensor", `
hardware:
  relays: {heat: {pin: GPIO17}}`, "hardware.sensors: no sensor configured"},
		{"duplicate names", `
hardware:
  sensors:
    - {type: tmp102}
    - {type: tmp102, address: 0x49}
  relays: {heat: {pin: GPIO17}}`, `line 5: hardware.sensors[1].name: name "tmp102" is already used by sensors[0]`},
		{"bad address", `
hardware:
  sensors:
    - name: room
      type: bme280
      address: 0x40
  relays: {heat: {pin: GPIO17}}`, "line 6: hardware.sensors[0].address: 0x40 is not an address a bme280 can have"},
		{"via on an I2C sensor", `
hardware:
  sensors:
    - {name: room, type: aht20, via: sysfs}
  relays: {heat: {pin: GPIO17}}`, "line 4: hardware.sensors[0].via: only a ds18b20 has via"},
		{"bad ds18b20 id", `
hardware:
  sensors:
    - name: floor
      type: ds18b20
      id: 10-000802b4
  relays: {heat: {pin: GPIO17}}`, `line 6: hardware.sensors[0].id: "10-000802b4" is not a DS18B20 id`},
		{"bad via", `
hardware:
  sensors: [{type: ds18b20, via: usb}]
  relays: {heat: {pin: GPIO17}}`, `line 3: hardware.sensors[0].via: "usb" is neither`},
		{"resolution", `
hardware:
  sensors: [{type: ds18b20, via: onewire, resolution_bits: 14}]
  relays: {heat: {pin: GPIO17}}`, "hardware.sensors[0].resolution_bits: 14 is outside 9..12"},
		{"filter", `
hardware:
  sensors:
    - type: tmp102
      filter:
        min_c: 30
        max_c: 10
  relays: {heat: {pin: GPIO17}}`, "line 5: hardware.sensors[0].filter: min_c 30 must be below max_c 10"},
		{"no relay", `
hardware:
  sensors: [{type: tmp102}]`, "hardware.relays: neither a heat nor a cool relay"},
		{"relay without pin", `
hardware:
  sensors: [{type: tmp102}]
  relays:
    heat:
      active_low: true`, "line 5: hardware.relays.heat.pin: no pin given"},
		{"pin used twice", `
hardware:
  sensors: [{type: tmp102}]
  relays:
    heat: {pin: GPIO17}
  buttons:
    up:
      pin: GPIO17`, "line 8: hardware.buttons.up.pin: pin GPIO17 is already used by hardware.relays.heat.pin"},
		{"bad pull", `
hardware:
  sensors: [{type: tmp102}]
  relays: {heat: {pin: GPIO17}}
  buttons:
    up: {pin: GPIO5, pull: sideways}`, `line 6: hardware.buttons.up.pull: "sideways" is not up, down or none`},
		{"debounce zero", `
hardware:
  sensors: [{type: tmp102}]
  relays: {heat: {pin: GPIO17}}
  buttons:
    debounce: 0s`, "line 6: hardware.buttons.debounce: must be greater than zero"},
		{"unknown key", `
hardware:
  sensors: [{type: tmp102}]
  relays:
    heat: {pin: GPIO17, invert: true}`, `line 5: hardware.relays.heat.invert: unknown key "invert"`},
		{"misspelt section key", `
hardware:
  sensor: [{type: tmp102}]`, `line 3: hardware.sensor: unknown key "sensor"`},
		{"wrong type", `
hardware:
  sensors: [{type: tmp102, address: far}]`, "line 3"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var f struct {
				Hardware Config `yaml:"hardware"`
			}
			err := yaml.Unmarshal([]byte(tc.src), &f)
			if err == nil {
				err = f.Hardware.Validate()
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v\nwant it to contain %q", err, tc.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	c := parse(t, typical).withDefaults()
	if c.Sensors[0].Bus != "pb-typical" || c.Sensors[1].Via != ViaSysfs || c.Sensors[1].ResolutionBits != 11 ||
		c.Buttons.Up.Pull != "up" || c.Buttons.Up.Pressed != "low" {
		t.Fatalf("defaults %+v", c)
	}
	orig := parse(t, typical)
	_ = orig.withDefaults()
	if orig.Buttons.Up.Pull != "" {
		t.Fatal("withDefaults wrote into the caller's config")
	}
	d := parse(t, "hardware:\n  sensors: [{type: aht20}]\n  relays: {cool: {pin: GPIO4}}\n  buttons: {up: {pin: GPIO5, pull: down}}\n").withDefaults()
	if d.Sensors[0].Address != 0x38 || d.Sensors[0].Name != "aht20" || d.Buttons.Up.Pressed != "high" || d.Sysfs != "/sys" {
		t.Fatalf("defaults %+v", d)
	}
}
