// Package config is the configuration of `thermostat run`: every setting is
// a command-line flag and a key of the YAML file given by --config, and a
// flag given on the command line wins over the file.
//
// The file holds the device's own settings at the top level, plus the
// `hardware:` section (hal/rpi's wiring) and the `control:` section (the
// control loop's tuning), which their packages decode and check. A key this
// firmware does not know, or a value it cannot use, is refused with the
// line it is on: a typo must not silently mean "use the default".
package config

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal/rpi"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/internal/schedfile"
	"github.com/thermofleet/thermo/internal/yamlconf"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// Defaults for a Raspberry Pi installed from the package: the files the
// .deb and `controllerlite pki device` lay out.
const (
	DefaultFile          = "/etc/thermostat/config.yaml"
	DefaultCA            = "/etc/thermostat/ca.crt"
	DefaultCert          = "/etc/thermostat/device.crt"
	DefaultKey           = "/etc/thermostat/device.key"
	DefaultStateDir      = "/var/lib/thermostat"
	DefaultControlSocket = "/run/thermostat/control.sock"
	DefaultReleaseKey    = "/etc/thermostat/release.pub"
)

// Boards --hal selects.
const (
	HALSim = "sim"
	HALRPi = "rpi"
)

// Config is everything `thermostat run` needs.
type Config struct {
	// Broker is mqtts://HOST:PORT. Required. In the file, `broker:` is
	// one address or a list of the nodes of one broker cluster; the first
	// is Broker, the others Failover, tried in turn when a connect fails
	// (transport.Options.Failover).
	Broker   string   `yaml:"broker"`
	Failover []string `yaml:"-"`
	// CA verifies the broker's certificate; Cert and Key are the device's,
	// and the certificate's Common Name is the device id.
	CA   string `yaml:"ca"`
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	// StateDir holds the sync state (clock, properties, stamps).
	StateDir string `yaml:"state_dir"`
	// HAL is the board: "rpi" (periph, wired as in Hardware) or "sim".
	HAL string `yaml:"hal"`
	// ControlSocket is the unix socket of `thermostat set` and `status`.
	ControlSocket string `yaml:"control_socket"`
	// TopicRoot is the first topic level, "thermo" by default.
	TopicRoot         string        `yaml:"topic_root"`
	TelemetryInterval time.Duration `yaml:"telemetry_interval"`
	// SyncTimeout bounds the wait of a rejoin after lost state.
	SyncTimeout time.Duration `yaml:"sync_timeout"`
	// KeepAlive is the MQTT keep-alive; a broker silent this long is dropped.
	KeepAlive time.Duration `yaml:"keep_alive"`
	LogLevel  string        `yaml:"log_level"`
	// RenewAt is the fraction of its certificate's life at which the
	// device renews it (a little earlier, by a random jitter).
	RenewAt float64 `yaml:"renew_at"`
	// EnrollURL is the controller's enrolment endpoint (serve
	// --enroll-listen), https://HOST:PORT: a device whose certificate
	// expired while it was off renews there. Empty: no such recovery.
	EnrollURL string `yaml:"enroll_url"`
	// MetricsAddr, if set, serves Prometheus metrics at /metrics on this
	// host:port, without authentication (firmware/metrics).
	MetricsAddr string `yaml:"metrics_addr"`
	// ReleaseKey is the release public key the board trusts for
	// over-the-air updates (docs/ota.md). The .deb installs it at the
	// default path; without the file there, updates are off.
	ReleaseKey string `yaml:"release_key"`
	// OTATrialDeadline is how long a new release has, at each start, to
	// prove healthy before it is rolled back.
	OTATrialDeadline time.Duration `yaml:"ota_trial_deadline"`

	// Sim tunes the simulated board of --hal sim.
	Sim SimConfig `yaml:"sim"`
	// Hardware is the wiring of --hal rpi.
	Hardware rpi.Config `yaml:"hardware"`
	// Control tunes the control loop.
	Control control.Config `yaml:"control"`
	// Presets and Schedule are the device's first values of those
	// properties (zero-stamped like every default), used until a write
	// replaces them; nil when not given.
	Presets  protocol.Presets   `yaml:"-"`
	Schedule *protocol.Schedule `yaml:"-"`

	// File is the configuration file read, "" when none.
	File string `yaml:"-"`
	// where says where each top-level key was set: "line N" of File or
	// "--flag", for error messages.
	lines yamlconf.Lines
	flags map[string]string // key to the flag that set it
}

// SimConfig is the `sim:` section.
type SimConfig struct {
	// Speed runs the simulated room (and the control loop's timers) this
	// many times faster than real time; 0 or 1 is real time.
	Speed float64 `yaml:"speed"`
	// InitialC and OutsideC are the room's starting and the outside
	// temperature; 0 takes hal/sim's defaults (18 and 10 °C).
	InitialC float64 `yaml:"initial_c"`
	OutsideC float64 `yaml:"outside_c"`
}

// Default returns the configuration before any file or flag.
func Default() Config {
	return Config{
		CA:                DefaultCA,
		Cert:              DefaultCert,
		Key:               DefaultKey,
		StateDir:          DefaultStateDir,
		HAL:               HALRPi,
		ControlSocket:     DefaultControlSocket,
		TopicRoot:         protocol.DefaultRoot,
		TelemetryInterval: 30 * time.Second,
		SyncTimeout:       10 * time.Second,
		KeepAlive:         transport.DefaultKeepAlive,
		LogLevel:          "info",
		RenewAt:           DefaultRenewAt,
		ReleaseKey:        DefaultReleaseKey,
		OTATrialDeadline:  3 * time.Minute,
	}
}

// DefaultRenewAt: at two thirds of its life, as step-ca does.
const DefaultRenewAt = 2.0 / 3

// keys are the top-level keys of the file, in the order of Config.
var keys = []string{"broker", "ca", "cert", "key", "state_dir", "hal", "control_socket", "topic_root",
	"telemetry_interval", "sync_timeout", "keep_alive", "log_level", "metrics_addr", "renew_at", "enroll_url", "release_key", "ota_trial_deadline", "sim", "hardware", "control", "presets", "schedule"}

// Parse reads a configuration file's contents over Default(). name is the
// file's name, for messages.
func Parse(data []byte, name string) (Config, error) {
	c := Default()
	c.File = name
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return c, nil // an empty file sets nothing
		}
		return c, fmt.Errorf("%s: %w", name, err)
	}
	var more yaml.Node
	if err := dec.Decode(&more); err == nil {
		return c, fmt.Errorf("%s: line %d: a second YAML document; the configuration is one", name, more.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		return c, nil
	}
	if root.Kind != yaml.MappingNode {
		return c, fmt.Errorf("%s: line %d: the configuration must be a mapping of keys to values", name, root.Line)
	}
	seen := map[string]int{}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k := root.Content[i]
		if !slices.Contains(keys, k.Value) {
			return c, fmt.Errorf("%s: line %d: unknown key %q (known: %s)", name, k.Line, k.Value, strings.Join(keys, ", "))
		}
		if prev, dup := seen[k.Value]; dup {
			return c, fmt.Errorf("%s: line %d: %s is already set on line %d", name, k.Line, k.Value, prev)
		}
		seen[k.Value] = k.Line
	}
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], root.Content[i+1]
		switch k.Value {
		case "broker":
			list, err := brokerList(v)
			if err != nil {
				return c, fmt.Errorf("%s: %w", name, err)
			}
			c.Broker, c.Failover = list[0], list[1:]
			// The rest of the file decodes as usual, the list as its first.
			*v = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: list[0], Line: v.Line, Column: v.Column}
		case "sim":
			if err := yamlconf.CheckKnown("sim", v, &SimConfig{}); err != nil {
				return c, fmt.Errorf("%s: %w", name, err)
			}
		case "presets":
			var raw map[string]any
			if err := v.Decode(&raw); err != nil {
				return c, fmt.Errorf("%s: line %d: presets: %w", name, v.Line, err)
			}
			p, err := protocol.Normalize(protocol.PropPresets, raw)
			if err != nil {
				return c, fmt.Errorf("%s: line %d: %w", name, v.Line, err)
			}
			c.Presets = p.(protocol.Presets)
		case "schedule":
			s, err := schedfile.FromNode(v)
			if err != nil {
				return c, fmt.Errorf("%s: %w", name, err)
			}
			c.Schedule = &s
		}
	}
	if err := root.Decode(&c); err != nil {
		msg := strings.TrimPrefix(err.Error(), "yaml: unmarshal errors:\n  ")
		if strings.Contains(msg, "into time.Duration") {
			msg += " (a duration needs a unit: 30s, 5m, 1h)"
		}
		return c, fmt.Errorf("%s: %s", name, msg)
	}
	c.lines = yamlconf.Index("", root)
	return c, nil
}

// brokerList reads `broker:`: one address or a non-empty list of them.
func brokerList(v *yaml.Node) ([]string, error) {
	switch v.Kind {
	case yaml.ScalarNode:
		return []string{v.Value}, nil
	case yaml.SequenceNode:
		if len(v.Content) == 0 {
			return nil, fmt.Errorf("line %d: broker: the list is empty", v.Line)
		}
		var out []string
		for _, e := range v.Content {
			if e.Kind != yaml.ScalarNode || e.Tag != "!!str" {
				return nil, fmt.Errorf("line %d: broker: each entry must be an address mqtts://HOST:PORT", e.Line)
			}
			out = append(out, e.Value)
		}
		return out, nil
	}
	return nil, fmt.Errorf("line %d: broker: want an address mqtts://HOST:PORT or a list of them", v.Line)
}

// Brokers returns Broker and Failover: every broker address, in order.
func (c *Config) Brokers() []string { return append([]string{c.Broker}, c.Failover...) }

// Load reads the configuration file path. When path is DefaultFile and it
// does not exist, the defaults stand: a board configured by flags alone
// needs no file.
func Load(path string, explicit bool) (Config, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !explicit {
		return Default(), nil
	}
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	c, err := Parse(data, path)
	if err != nil {
		return Config{}, fmt.Errorf("config %w", err)
	}
	return c, nil
}

// errorf reports a bad value of key, pointing at the flag or the line that
// set it.
func (c *Config) errorf(key, format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	if f, ok := c.flags[key]; ok {
		return fmt.Errorf("--%s: %s", f, msg)
	}
	if n, ok := c.lines.Exact(key); ok && c.File != "" {
		return fmt.Errorf("config %s: line %d: %s: %s", c.File, n, key, msg)
	}
	return fmt.Errorf("%s: %s", key, msg)
}

// Validate checks every value, the hardware section's only with --hal rpi.
func (c *Config) Validate() error {
	if c.Broker == "" {
		return c.errorf("broker", "no broker given: set --broker mqtts://HOST:8883 or broker: in the config file")
	}
	for _, b := range c.Brokers() {
		if _, err := transport.ParseBroker(b); err != nil {
			return c.errorf("broker", "%v", err)
		}
	}
	for _, f := range []struct{ key, val string }{{"ca", c.CA}, {"cert", c.Cert}, {"key", c.Key}, {"state_dir", c.StateDir}, {"control_socket", c.ControlSocket}} {
		if strings.TrimSpace(f.val) == "" {
			return c.errorf(f.key, "must not be empty")
		}
	}
	if c.HAL != HALSim && c.HAL != HALRPi {
		return c.errorf("hal", "%q is neither %q nor %q", c.HAL, HALRPi, HALSim)
	}
	if err := protocol.CheckRoot(c.TopicRoot); err != nil {
		return c.errorf("topic_root", "%v", err)
	}
	for _, d := range []struct {
		key      string
		v        time.Duration
		min, max time.Duration
	}{
		{"telemetry_interval", c.TelemetryInterval, time.Second, time.Hour},
		{"sync_timeout", c.SyncTimeout, 100 * time.Millisecond, time.Hour},
		{"keep_alive", c.KeepAlive, time.Second, 30 * time.Minute},
		{"ota_trial_deadline", c.OTATrialDeadline, time.Second, time.Hour},
	} {
		if d.v < d.min || d.v > d.max {
			return c.errorf(d.key, "%v is outside %v..%v", d.v, d.min, d.max)
		}
	}
	if _, err := ParseLevel(c.LogLevel); err != nil {
		return c.errorf("log_level", "%v", err)
	}
	if math.IsNaN(c.RenewAt) || c.RenewAt < 0.1 || c.RenewAt > 0.95 {
		return c.errorf("renew_at", "%v is outside 0.1..0.95 (a fraction of the certificate's life)", c.RenewAt)
	}
	if c.EnrollURL != "" {
		if u, err := url.Parse(c.EnrollURL); err != nil || u.Scheme != "https" || u.Host == "" {
			return c.errorf("enroll_url", "%q: want https://HOST:PORT, the controller's --enroll-listen", c.EnrollURL)
		}
	}
	if c.MetricsAddr != "" {
		if _, port, err := net.SplitHostPort(c.MetricsAddr); err != nil {
			return c.errorf("metrics_addr", "%q is not host:port (such as 127.0.0.1:9100): %v", c.MetricsAddr, err)
		} else if _, err := strconv.ParseUint(port, 10, 16); err != nil {
			return c.errorf("metrics_addr", "%q: port %q is not a number from 0 to 65535", c.MetricsAddr, port)
		}
	}
	if s := c.Sim.Speed; math.IsNaN(s) || s < 0 || s > 10000 {
		return c.errorf("sim", "speed %v is outside 0..10000", s)
	}
	for _, t := range []float64{c.Sim.InitialC, c.Sim.OutsideC} {
		if math.IsNaN(t) || t < -40 || t > 60 {
			return c.errorf("sim", "temperature %v °C is outside -40..60", t)
		}
	}
	if err := c.Control.Validate(); err != nil {
		return c.sectionErr(err)
	}
	if c.HAL == HALRPi {
		if err := c.Hardware.Validate(); err != nil {
			return c.sectionErr(err)
		}
	}
	return nil
}

func (c *Config) sectionErr(err error) error {
	if c.File != "" {
		return fmt.Errorf("config %s: %w", c.File, err)
	}
	return fmt.Errorf("config: %w", err)
}

// Flags binds the command-line flags of `thermostat run` to a FlagSet.
type Flags struct {
	fs      *flag.FlagSet
	file    string
	shadow  Config
	brokers cli.StringList // --broker, repeated
	// byFlag maps each flag name to the key it sets.
	byFlag map[string]string
}

// flagKeys maps flag names to the keys they set.
var flagKeys = map[string]string{
	"broker": "broker", "ca": "ca", "cert": "cert", "key": "key", "state-dir": "state_dir",
	"hal": "hal", "control-socket": "control_socket", "topic-root": "topic_root",
	"telemetry-interval": "telemetry_interval", "sync-timeout": "sync_timeout",
	"keep-alive": "keep_alive", "log-level": "log_level", "metrics-addr": "metrics_addr", "sim-speed": "sim",
	"renew-at": "renew_at", "enroll-url": "enroll_url",
	"release-key": "release_key", "ota-trial-deadline": "ota_trial_deadline",
}

// RegisterFlags adds the flags of `thermostat run` to fs.
func RegisterFlags(fs *flag.FlagSet) *Flags {
	f := &Flags{fs: fs, shadow: Default(), byFlag: flagKeys}
	s := &f.shadow
	fs.StringVar(&f.file, "config", DefaultFile, "YAML configuration file (every flag is also a key there; flags win)")
	fs.Var(&f.brokers, "broker", "broker address, mqtts://HOST:PORT (required); repeat it (or separate with commas) for the nodes of a broker cluster, tried in turn")
	fs.StringVar(&s.CA, "ca", s.CA, "CA certificate that issued the broker's certificate")
	fs.StringVar(&s.Cert, "cert", s.Cert, "device certificate; its Common Name is the device id")
	fs.StringVar(&s.Key, "key", s.Key, "device private key")
	fs.StringVar(&s.StateDir, "state-dir", s.StateDir, "directory of the sync state (clock, properties)")
	fs.StringVar(&s.HAL, "hal", s.HAL, "board: rpi (wired as in the hardware: section) or sim (a simulated room)")
	fs.StringVar(&s.ControlSocket, "control-socket", s.ControlSocket, "unix socket of 'thermostat set' and 'thermostat status'")
	fs.StringVar(&s.TopicRoot, "topic-root", s.TopicRoot, "first level of every MQTT topic")
	fs.DurationVar(&s.TelemetryInterval, "telemetry-interval", s.TelemetryInterval, "time between telemetry reports")
	fs.DurationVar(&s.SyncTimeout, "sync-timeout", s.SyncTimeout, "how long a device with lost state waits to hear from the controller")
	fs.DurationVar(&s.KeepAlive, "keep-alive", s.KeepAlive, "MQTT keep-alive; a broker silent this long is dropped")
	fs.StringVar(&s.LogLevel, "log-level", s.LogLevel, "debug, info, warn or error")
	fs.Float64Var(&s.RenewAt, "renew-at", s.RenewAt, "renew the device certificate at this fraction of its life (0.1 to 0.95)")
	fs.StringVar(&s.EnrollURL, "enroll-url", "", "the controller's enrolment endpoint, https://HOST:PORT (serve --enroll-listen): renews a certificate that expired while the device was off")
	fs.StringVar(&s.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics at /metrics on this host:port (off when empty; no authentication, so keep it on loopback or a trusted network)")
	fs.StringVar(&s.ReleaseKey, "release-key", s.ReleaseKey, "release public key trusted for over-the-air updates (updates are off without the default file)")
	fs.DurationVar(&s.OTATrialDeadline, "ota-trial-deadline", s.OTATrialDeadline, "how long a new release has at each start to prove healthy before it is rolled back")
	fs.Float64Var(&s.Sim.Speed, "sim-speed", 0, "with --hal sim: run the simulated room this many times faster than real time")
	return f
}

// Config returns the file's configuration with the flags given on the
// command line applied over it. Call it after fs.Parse. It does not
// validate: `thermostat set` needs only the socket.
func (f *Flags) Config() (Config, error) {
	explicit := false
	f.fs.Visit(func(fl *flag.Flag) {
		if fl.Name == "config" {
			explicit = true
		}
	})
	c, err := Load(f.file, explicit)
	if err != nil {
		return Config{}, err
	}
	if c.File == "" && explicit {
		c.File = f.file
	}
	c.flags = map[string]string{}
	s := f.shadow
	f.fs.Visit(func(fl *flag.Flag) {
		key, ok := f.byFlag[fl.Name]
		if !ok {
			return
		}
		c.flags[key] = fl.Name
		switch key {
		case "broker":
			c.Broker, c.Failover = "", nil
			if len(f.brokers) > 0 {
				c.Broker, c.Failover = f.brokers[0], f.brokers[1:]
			}
		case "ca":
			c.CA = s.CA
		case "cert":
			c.Cert = s.Cert
		case "key":
			c.Key = s.Key
		case "state_dir":
			c.StateDir = s.StateDir
		case "hal":
			c.HAL = s.HAL
		case "control_socket":
			c.ControlSocket = s.ControlSocket
		case "topic_root":
			c.TopicRoot = s.TopicRoot
		case "telemetry_interval":
			c.TelemetryInterval = s.TelemetryInterval
		case "sync_timeout":
			c.SyncTimeout = s.SyncTimeout
		case "keep_alive":
			c.KeepAlive = s.KeepAlive
		case "log_level":
			c.LogLevel = s.LogLevel
		case "metrics_addr":
			c.MetricsAddr = s.MetricsAddr
		case "sim":
			c.Sim.Speed = s.Sim.Speed
		case "renew_at":
			c.RenewAt = s.RenewAt
		case "enroll_url":
			c.EnrollURL = s.EnrollURL
		case "release_key":
			c.ReleaseKey = s.ReleaseKey
		case "ota_trial_deadline":
			c.OTATrialDeadline = s.OTATrialDeadline
		}
	})
	return c, nil
}

// Args returns the command-line arguments that reproduce the flags given,
// for a service definition that must run with the same settings.
func (f *Flags) Args() []string {
	var out []string
	f.fs.Visit(func(fl *flag.Flag) {
		if _, ok := f.byFlag[fl.Name]; ok || fl.Name == "config" {
			out = append(out, "--"+fl.Name+"="+fl.Value.String())
		}
	})
	return out
}

// ParseLevel turns debug, info, warn or error into a slog level.
func ParseLevel(s string) (slog.Level, error) {
	switch strings.ToLower(s) {
	case "debug":
		return slog.LevelDebug, nil
	case "info", "":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
}
