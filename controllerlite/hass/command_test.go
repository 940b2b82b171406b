package hass

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCommandChanges(t *testing.T) {
	def := view("d1", true, map[string]any{"mode": "heat", "setpoint_c": 20}, "")
	own := view("d2", true, map[string]any{"presets": map[string]any{"day": 21, "night": 17}}, "")
	for _, tc := range []struct {
		name    string
		topic   string
		payload string
		own     bool           // the device with its own presets
		want    map[string]any // nil: refused
		reason  string
	}{
		{"mode", "thermofleet/d1/mode/set", "cool", false, map[string]any{"mode": "cool"}, ""},
		{"mode off", "thermofleet/d1/mode/set", "off", false, map[string]any{"mode": "off"}, ""},
		{"mode with a line break", "thermofleet/d1/mode/set", "auto\n", false, map[string]any{"mode": "auto"}, ""},
		{"mode HA has and we lack", "thermofleet/d1/mode/set", "dry", false, nil, "not one of"},
		{"mode empty", "thermofleet/d1/mode/set", "", false, nil, "not one of"},
		{"mode capitalised", "thermofleet/d1/mode/set", "Heat", false, nil, "not one of"},
		{"temperature", "thermofleet/d1/target_temperature/set", "21.5", false, map[string]any{"setpoint_c": 21.5}, ""},
		{"temperature rounded", "thermofleet/d1/target_temperature/set", "21.04", false, map[string]any{"setpoint_c": 21.0}, ""},
		{"temperature at the limits", "thermofleet/d1/target_temperature/set", "35", false, map[string]any{"setpoint_c": 35.0}, ""},
		{"temperature low limit", "thermofleet/d1/target_temperature/set", "5.0", false, map[string]any{"setpoint_c": 5.0}, ""},
		{"temperature too high", "thermofleet/d1/target_temperature/set", "35.1", false, nil, "from 5 to 35"},
		{"temperature too low", "thermofleet/d1/target_temperature/set", "4.9", false, nil, "from 5 to 35"},
		{"temperature not a number", "thermofleet/d1/target_temperature/set", "warm", false, nil, "from 5 to 35"},
		{"temperature NaN", "thermofleet/d1/target_temperature/set", "NaN", false, nil, "from 5 to 35"},
		{"temperature infinite", "thermofleet/d1/target_temperature/set", "+Inf", false, nil, "from 5 to 35"},
		{"temperature JSON", "thermofleet/d1/target_temperature/set", `{"t":21}`, false, nil, "from 5 to 35"},
		{"preset default", "thermofleet/d1/preset_mode/set", "eco", false, map[string]any{"preset": "eco"}, ""},
		{"preset none", "thermofleet/d1/preset_mode/set", "none", false, map[string]any{"preset": "none"}, ""},
		{"preset of another device", "thermofleet/d1/preset_mode/set", "night", false, nil, "not one of d1's presets"},
		{"preset own", "thermofleet/d2/preset_mode/set", "night", true, map[string]any{"preset": "night"}, ""},
		{"default preset the device replaced", "thermofleet/d2/preset_mode/set", "eco", true, nil, "not one of d2's presets"},
		{"preset HA's None", "thermofleet/d1/preset_mode/set", "None", false, nil, "not one of"},
		{"payload too long", "thermofleet/d1/preset_mode/set", strings.Repeat("a", 65), false, nil, "65 bytes"},
		{"state topic, not a command", "thermofleet/d1/current_temperature/set", "20", false, nil, "cannot be set"},
		{"availability", "thermofleet/d1/availability/set", "online", false, nil, "cannot be set"},
		{"not a command topic", "thermofleet/d1/mode", "heat", false, nil, "not a command topic"},
		{"other root", "other/d1/mode/set", "heat", false, nil, "not under"},
		{"bridge's level", "thermofleet/controller/mode/set", "heat", false, nil, "names no device"},
		{"bad id", "thermofleet/D1/mode/set", "heat", false, nil, "names no device"},
		{"deeper", "thermofleet/d1/sensor/x/set", "heat", false, nil, "cannot be set"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := def
			if tc.own {
				d = own
			}
			got, err := func() (map[string]any, error) {
				id, attr, err := testTopics.parseCommandTopic(tc.topic)
				if err != nil {
					return nil, err
				}
				if id != d.ID {
					t.Fatalf("id %q, want %q", id, d.ID)
				}
				return commandChanges(d, attr, []byte(tc.payload))
			}()
			if tc.want == nil {
				if err == nil || !errors.Is(err, ErrBadCommand) || !strings.Contains(err.Error(), tc.reason) {
					t.Fatalf("got %v, %v; want a refusal saying %q", got, err, tc.reason)
				}
				return
			}
			if err != nil || !maps.Equal(got, tc.want) {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestReadPasswordFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
		err     string
	}{
		{"line break trimmed", "s3cret pass\n", 0o600, "s3cret pass", ""},
		{"CRLF trimmed", "s3cret\r\n", 0o640, "s3cret", ""},
		{"no line break", "s3cret", 0o600, "s3cret", ""},
		{"inner spaces kept", " a b ", 0o600, " a b ", ""},
		{"empty", "\n", 0o600, "", "is empty"},
		{"readable by everyone", "s3cret\n", 0o644, "", "chmod o-rwx"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			if err := os.WriteFile(path, []byte(tc.content), tc.mode); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(path, tc.mode); err != nil { // past the umask
				t.Fatal(err)
			}
			got, err := ReadPasswordFile(path)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %q, %v; want an error saying %q", got, err, tc.err)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := ReadPasswordFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing file was read")
	}
}

func TestOptionsCheck(t *testing.T) {
	for _, tc := range []struct {
		name string
		o    Options
		err  string
	}{
		{"plain", Options{Broker: "mqtt://ha.lan"}, ""},
		{"tls with a private CA", Options{Broker: "mqtts://ha.lan:8883", CAFile: "ca.pem"}, ""},
		{"user and password", Options{Broker: "mqtt://ha.lan", Username: "u", Password: "p"}, ""},
		{"no broker", Options{}, "--ha-broker"},
		{"bad scheme", Options{Broker: "http://ha.lan"}, "--ha-broker"},
		{"CA on plain", Options{Broker: "mqtt://ha.lan", CAFile: "ca.pem"}, "--ha-ca is for an mqtts://"},
		{"password without user", Options{Broker: "mqtt://ha.lan", Password: "p"}, "needs --ha-username"},
		{"wildcard prefix", Options{Broker: "mqtt://ha.lan", Prefix: "home/#"}, "--ha-prefix"},
		{"bad root", Options{Broker: "mqtt://ha.lan", TopicRoot: "a//b"}, "--ha-topic-root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.o
			err := o.Check()
			if tc.err == "" {
				if err != nil {
					t.Fatal(err)
				}
				if o.Prefix == "" || o.TopicRoot == "" || o.ClientID == "" {
					t.Errorf("defaults not filled: %+v", o)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("got %v, want an error saying %q", err, tc.err)
			}
		})
	}
}
