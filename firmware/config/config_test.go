package config

import (
	"flag"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

const good = `# a simulated thermostat
broker: mqtts://broker.lan:8883
ca: /etc/t/ca.crt
cert: /etc/t/device.crt
key: /etc/t/device.key
state_dir: /tmp/state
hal: sim
control_socket: /tmp/ctl.sock
topic_root: site/thermo
telemetry_interval: 10s
sync_timeout: 5s
keep_alive: 20s
log_level: debug
sim:
  speed: 60
  initial_c: 15
control:
  band_c: 0.5
`

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestParseGood(t *testing.T) {
	c, err := Parse([]byte(good), "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	want := Config{Broker: "mqtts://broker.lan:8883", CA: "/etc/t/ca.crt", Cert: "/etc/t/device.crt", Key: "/etc/t/device.key",
		StateDir: "/tmp/state", HAL: "sim", ControlSocket: "/tmp/ctl.sock", TopicRoot: "site/thermo",
		TelemetryInterval: 10 * time.Second, SyncTimeout: 5 * time.Second, KeepAlive: 20 * time.Second, LogLevel: "debug"}
	got := c
	if got.Broker != want.Broker || got.CA != want.CA || got.Cert != want.Cert || got.Key != want.Key || got.StateDir != want.StateDir ||
		got.HAL != want.HAL || got.ControlSocket != want.ControlSocket || got.TopicRoot != want.TopicRoot ||
		got.TelemetryInterval != want.TelemetryInterval || got.SyncTimeout != want.SyncTimeout || got.KeepAlive != want.KeepAlive || got.LogLevel != want.LogLevel {
		t.Errorf("parsed %+v", c)
	}
	if c.Sim.Speed != 60 || c.Sim.InitialC != 15 || c.Control.BandC != 0.5 {
		t.Errorf("sections: sim %+v control band %v", c.Sim, c.Control.BandC)
	}
}

func TestParseEmptyIsDefaults(t *testing.T) {
	for _, content := range []string{"", "# nothing\n", "---\n"} {
		c, err := Parse([]byte(content), "x")
		if err != nil {
			t.Fatalf("%q: %v", content, err)
		}
		if c.StateDir != DefaultStateDir || c.TelemetryInterval != 30*time.Second {
			t.Errorf("%q: %+v", content, c)
		}
	}
}

// TestBadFiles: every refusal names the line and the reason.
func TestBadFiles(t *testing.T) {
	base := "broker: mqtts://b:8883\nhal: sim\n"
	tests := []struct {
		name, content string
		want          []string
	}{
		{"unknown key", base + "brokr: x\n", []string{"line 3", `unknown key "brokr"`}},
		{"unknown sim key", base + "sim:\n  sped: 3\n", []string{"line 4", "sim.sped", "unknown key"}},
		{"unknown control key", base + "control:\n  min_of: 3m\n", []string{"line 4", "control.min_of"}},
		{"unknown hardware key", base + "hardware:\n  relay: {}\n", []string{"line 4", "hardware.relay"}},
		{"bad duration", base + "telemetry_interval: soon\n", []string{"line 3", "soon"}},
		{"duration without unit", base + "keep_alive: 15\n", []string{"line 3"}},
		{"duration out of range", base + "telemetry_interval: 100ms\n", []string{"line 3", "telemetry_interval", "outside 1s..1h"}},
		{"keep-alive under a second", base + "keep_alive: 500ms\n", []string{"line 3", "keep_alive"}},
		{"unknown board", "broker: mqtts://b:8883\nhal: arduino\n", []string{"line 2", "hal", "arduino"}},
		{"plain-text broker", "hal: sim\nbroker: mqtt://b:1883\n", []string{"line 2", "broker", "plain-text"}},
		{"wildcard root", base + "topic_root: thermo/#\n", []string{"line 3", "topic_root"}},
		{"log level", base + "log_level: loud\n", []string{"line 3", "log_level", "loud"}},
		{"sim speed", base + "sim:\n  speed: -2\n", []string{"line 3", "sim", "speed"}},
		{"control band zero", base + "control:\n  band_c: 0\n", []string{"line 4", "control.band_c"}},
		{"rpi without sensors", "broker: mqtts://b:8883\nhal: rpi\nhardware:\n  relays:\n    heat: {pin: GPIO17}\n", []string{"hardware.sensors", "no sensor"}},
		{"not a mapping", "- broker\n", []string{"line 1", "mapping"}},
		{"duplicate key", base + "hal: rpi\n", []string{"line 3", "already set on line 2"}},
		{"empty value", base + "state_dir: \"\"\n", []string{"line 3", "state_dir", "empty"}},
		{"no broker", "hal: sim\n", []string{"no broker"}},
		{"yaml syntax", base + "ca: [unclosed\n", []string{"line"}},
		{"two documents", base + "---\nhal: rpi\n", []string{"second YAML document"}},
		{"metrics address without port", base + "metrics_addr: 127.0.0.1\n", []string{"line 3", "metrics_addr", "host:port"}},
		{"metrics port not a number", base + "metrics_addr: \"127.0.0.1:http\"\n", []string{"line 3", "metrics_addr", "0 to 65535"}},
		{"metrics port too big", base + "metrics_addr: \":70000\"\n", []string{"line 3", "metrics_addr", "0 to 65535"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse([]byte(tc.content), "test.yaml")
			if err == nil {
				err = c.Validate()
			}
			if err == nil {
				t.Fatalf("accepted:\n%s", tc.content)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

func parseFlags(t *testing.T, args ...string) (Config, error) {
	t.Helper()
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f := RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return Config{}, err
	}
	c, err := f.Config()
	if err != nil {
		return c, err
	}
	return c, c.Validate()
}

func TestFlagsOverrideTheFile(t *testing.T) {
	file := writeFile(t, good)
	c, err := parseFlags(t, "--config", file, "--telemetry-interval", "20s", "--hal=sim", "--broker", "mqtts://other:1234")
	if err != nil {
		t.Fatal(err)
	}
	if c.TelemetryInterval != 20*time.Second || c.Broker != "mqtts://other:1234" {
		t.Errorf("flags did not win: %+v", c)
	}
	if c.SyncTimeout != 5*time.Second || c.TopicRoot != "site/thermo" || c.Control.BandC != 0.5 {
		t.Errorf("file values lost: %+v", c)
	}
	// A bad flag value is blamed on the flag, not the file.
	_, err = parseFlags(t, "--config", file, "--sync-timeout", "2h")
	if err == nil || !strings.Contains(err.Error(), "--sync-timeout") {
		t.Errorf("error %v, want it to name --sync-timeout", err)
	}
	// Without the flag, the file's line.
	bad := writeFile(t, strings.Replace(good, "sync_timeout: 5s", "sync_timeout: 2h", 1))
	_, err = parseFlags(t, "--config", bad)
	if err == nil || !strings.Contains(err.Error(), "line 11: sync_timeout") {
		t.Errorf("error %v, want line 11", err)
	}
}

// --metrics-addr and metrics_addr: off by default, set by either, the
// flag winning and blamed for its own bad value.
func TestMetricsAddr(t *testing.T) {
	base := []string{"--broker", "mqtts://b:8883", "--hal", "sim", "--config", writeFile(t, "metrics_addr: 127.0.0.1:9100\n")}
	tests := []struct {
		name string
		args []string
		want string
		err  string
	}{
		{"off by default", []string{"--broker", "mqtts://b:8883", "--hal", "sim", "--config", writeFile(t, "")}, "", ""},
		{"from the file", base, "127.0.0.1:9100", ""},
		{"the flag wins", append(base, "--metrics-addr", "[::1]:9200"), "[::1]:9200", ""},
		{"any interface", append(base, "--metrics-addr", ":9100"), ":9100", ""},
		{"bad flag", append(base, "--metrics-addr", "localhost"), "", "--metrics-addr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := parseFlags(t, tc.args...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want it to name %s", err, tc.err)
				}
				return
			}
			if err != nil || c.MetricsAddr != tc.want {
				t.Fatalf("metrics address %q (%v), want %q", c.MetricsAddr, err, tc.want)
			}
		})
	}
}

func TestConfigFileMissing(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none.yaml")
	if _, err := parseFlags(t, "--config", missing, "--broker", "mqtts://b", "--hal", "sim"); err == nil || !strings.Contains(err.Error(), "none.yaml") {
		t.Errorf("an explicit missing file: %v", err)
	}
	// The default file may be absent: flags alone configure the board.
	c, err := Load(missing, false)
	if err != nil || c.StateDir != DefaultStateDir {
		t.Errorf("implicit missing file: %+v %v", c, err)
	}
}

func TestArgsReproduceTheFlags(t *testing.T) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	f := RegisterFlags(fs)
	args := []string{"--broker=mqtts://b:8883", "--hal=sim", "--keep-alive=5s", "--sim-speed=60"}
	if err := fs.Parse(args); err != nil {
		t.Fatal(err)
	}
	got := f.Args()
	for _, a := range []string{"--broker=mqtts://b:8883", "--hal=sim", "--keep-alive=5s", "--sim-speed=60"} {
		if !slices.Contains(got, a) {
			t.Errorf("Args %v lacks %s", got, a)
		}
	}
}

// The example configuration shipped in the packages must load as it is,
// strictly, and show the defaults where it says so.
func TestExampleConfig(t *testing.T) {
	c, err := Load("../thermostat.example.yaml", true)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	d := Default()
	if c.CA != d.CA || c.Cert != d.Cert || c.Key != d.Key || c.StateDir != d.StateDir || c.HAL != d.HAL ||
		c.ControlSocket != d.ControlSocket || c.TopicRoot != d.TopicRoot || c.TelemetryInterval != d.TelemetryInterval ||
		c.SyncTimeout != d.SyncTimeout || c.KeepAlive != d.KeepAlive || c.LogLevel != d.LogLevel {
		t.Errorf("the example's device keys differ from the defaults it claims:\n%+v\n%+v", c, d)
	}
	if len(c.Hardware.Sensors) == 0 || c.Control.BandC == 0 {
		t.Errorf("the example's hardware and control sections did not load: %+v", c)
	}
}

// The configuration may give the device's first presets and week program,
// checked by the properties' own rules, with the line of a problem.
func TestPresetsAndSchedule(t *testing.T) {
	c, err := Parse([]byte(`broker: mqtts://b:8883
presets: {home: 21.5, away: 15}
schedule:
  enabled: true
  tz: Europe/Berlin
  week:
    mon: [{at: "06:30", preset: home}, {at: "22:00", setpoint_c: 17}]
`), "config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if c.Presets["home"] != 21.5 || c.Schedule == nil || !c.Schedule.Enabled || len(c.Schedule.Week["mon"]) != 2 {
		t.Fatalf("presets %v schedule %+v", c.Presets, c.Schedule)
	}
	for _, tc := range []struct{ in, want string }{
		{"presets: {none: 20}\n", "line 1: "},
		{"presets: [20]\n", "line 1: presets"},
		{"schedule:\n  enabled: true\n  week:\n    mon:\n      - {at: \"25:00\", setpoint_c: 20}\n", "line 5: "},
		{"schedule:\n  week: {}\n", "no enabled"},
	} {
		if _, err := Parse([]byte(tc.in), "config.yaml"); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: err = %v, want it to contain %q", tc.in, err, tc.want)
		}
	}
}

// TestBrokerList: broker: is one address or a list of a cluster's nodes,
// in the file and as --broker repeated (or comma-separated); the flag
// replaces the file's whole list, and every address is checked.
func TestBrokerList(t *testing.T) {
	one := "mqtts://broker.lan:8883"
	for _, tc := range []struct {
		name   string
		file   string // replaces the broker line of good
		flags  []string
		want   []string
		errHas string
	}{
		{"one in the file", "broker: " + one, nil, []string{one}, ""},
		{"list in the file", "broker:\n  - mqtts://a:8883\n  - mqtts://b:8883", nil, []string{"mqtts://a:8883", "mqtts://b:8883"}, ""},
		{"flow list", "broker: [mqtts://a, mqtts://b, mqtts://c]", nil, []string{"mqtts://a", "mqtts://b", "mqtts://c"}, ""},
		{"flag repeated wins", "broker: [mqtts://a, mqtts://b]", []string{"--broker", "mqtts://x", "--broker", "mqtts://y"}, []string{"mqtts://x", "mqtts://y"}, ""},
		{"flag with commas", "broker: " + one, []string{"--broker", "mqtts://x,mqtts://y"}, []string{"mqtts://x", "mqtts://y"}, ""},
		{"empty list", "broker: []", nil, nil, "line 2: broker: the list is empty"},
		{"mapping", "broker: {a: b}", nil, nil, "line 2: broker: want an address"},
		{"nested list", "broker: [[mqtts://a]]", nil, nil, "each entry must be an address"},
		{"plain node in the list", "broker: [mqtts://a, mqtt://b]", nil, nil, "plain-text"},
		{"plain node by flag", "broker: " + one, []string{"--broker", "mqtts://a", "--broker", "mqtt://b"}, nil, "--broker: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			file := writeFile(t, strings.Replace(good, "broker: "+one, tc.file, 1))
			c, err := parseFlags(t, append([]string{"--config", file}, tc.flags...)...)
			if err == nil {
				err = c.Validate()
			}
			if tc.errHas != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errHas) {
					t.Fatalf("error %v, want it to contain %q", err, tc.errHas)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Brokers(); !slices.Equal(got, tc.want) {
				t.Fatalf("brokers %q, want %q", got, tc.want)
			}
		})
	}
}
