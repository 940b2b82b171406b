package yamlconf

import (
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

func TestLines(t *testing.T) {
	src := `
relays:
  heat:
    pin: GPIO17
sensors:
  - name: room
    type: bme280
`
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	l := Index("hardware", &n)
	tests := []struct {
		path string
		line int
	}{
		{"relays.heat.pin", 4},
		{"relays.heat", 3},            // a block mapping: its key's line
		{"relays.heat.active_low", 3}, // absent: nearest ancestor
		{"sensors[0].type", 7},
		{"sensors[0].address", 6}, // absent: the list item
		{"nothing.here", 2},       // absent: the section
	}
	for _, tc := range tests {
		if got := l.Line(tc.path); got != tc.line {
			t.Errorf("Line(%q) = %d, want %d", tc.path, got, tc.line)
		}
	}
	if got := l.Errorf("relays.heat.pin", "no pin %q", "GPIO17").Error(); got != `line 4: hardware.relays.heat.pin: no pin "GPIO17"` {
		t.Errorf("Errorf = %s", got)
	}
	if got := (Lines{Section: "control"}).Errorf("band_c", "bad").Error(); got != "control.band_c: bad" {
		t.Errorf("Errorf without a file = %s", got)
	}
}

func TestCheckKnown(t *testing.T) {
	type inner struct {
		Pin string `yaml:"pin"`
	}
	type cfg struct {
		Relays map[string]inner `yaml:"relays"`
		List   []inner          `yaml:"list"`
		Ptr    *inner           `yaml:"ptr"`
	}
	for _, tc := range []struct{ src, want string }{
		{"relays: {heat: {pin: x}}\nlist: [{pin: y}]\nptr: {pin: z}\n", ""},
		{"relays: {heat: {pni: x}}\n", `line 1: s.relays.heat.pni: unknown key "pni" (known: pin)`},
		{"list:\n  - pin: a\n  - pine: b\n", `line 3: s.list[1].pine: unknown key`},
		{"ptr: {pin: z, x: 1}\n", `line 1: s.ptr.x: unknown key`},
	} {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(tc.src), &n); err != nil {
			t.Fatal(err)
		}
		err := CheckKnown("s", &n, &cfg{})
		if (tc.want == "") != (err == nil) || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("CheckKnown(%q) = %v, want %q", tc.src, err, tc.want)
		}
	}
}
