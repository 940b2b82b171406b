package hass

import (
	"encoding/json"
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

var testTopics = Topics{Prefix: "homeassistant", Root: "thermofleet"}

// view is a device as the fleet shows it.
func view(id string, online bool, props map[string]any, telemetry string) fleet.Device {
	p := protocol.Props{}
	for name, v := range props {
		n, err := protocol.Normalize(name, v)
		if err != nil {
			panic(err)
		}
		p[name] = protocol.Prop{Val: n}
	}
	d := fleet.Device{ID: id, Online: online, Props: p}
	if telemetry != "" {
		d.Telemetry = json.RawMessage(telemetry)
	}
	return d
}

func TestEntities(t *testing.T) {
	for _, tc := range []struct {
		name    string
		d       fleet.Device
		configs []string          // discovery topics, in order
		states  map[string]string // every state published, by topic
		presets []string          // the climate document's preset_modes
		fw      string            // the firmware the device reports: the device block's sw_version
	}{
		{
			name:    "new device, no telemetry yet",
			d:       view("d1", false, nil, ""),
			configs: []string{"homeassistant/climate/thermofleet/d1/config"},
			states: map[string]string{
				"thermofleet/d1/availability": "offline",
				"thermofleet/d1/preset_mode":  "none",
			},
			presets: []string{"away", "comfort", "eco", "home", "sleep"},
		},
		{
			name: "heating, on a preset, two sensors (one faulty)",
			d: view("living-room", true, map[string]any{"mode": "heat", "setpoint_c": 21, "preset": "home"},
				`{"v":1,"ts":"2026-12-04T20:00:00Z","temp_c":20.31,"heat":true,"cool":false,"sensor_ok":true,"action":"heating",
				  "sensors":{"floor":{"temp_c":23.5,"ok":true},"out.door":{"ok":false}}}`),
			configs: []string{
				"homeassistant/climate/thermofleet/living-room/config",
				"homeassistant/sensor/thermofleet/living-room_floor/config",
				"homeassistant/sensor/thermofleet/living-room_out_door/config",
			},
			states: map[string]string{
				"thermofleet/living-room/availability":                 "online",
				"thermofleet/living-room/mode":                         "heat",
				"thermofleet/living-room/target_temperature":           "21",
				"thermofleet/living-room/preset_mode":                  "home",
				"thermofleet/living-room/current_temperature":          "20.31",
				"thermofleet/living-room/action":                       "heating",
				"thermofleet/living-room/sensor/floor/availability":    "online",
				"thermofleet/living-room/sensor/floor/temperature":     "23.5",
				"thermofleet/living-room/sensor/out.door/availability": "offline",
			},
			presets: []string{"away", "comfort", "eco", "home", "sleep"},
			fw:      "1.4.0",
		},
		{
			name: "own presets, firmware without action, control sensor failed",
			d: view("d2", true, map[string]any{"mode": "cool", "setpoint_c": 24.5, "preset": "none", "presets": map[string]any{"day": 24.5, "night": 26}},
				`{"v":1,"ts":"2026-12-04T20:00:00Z","heat":false,"cool":true,"sensor_ok":false}`),
			configs: []string{"homeassistant/climate/thermofleet/d2/config"},
			states: map[string]string{
				"thermofleet/d2/availability":       "online",
				"thermofleet/d2/mode":               "cool",
				"thermofleet/d2/target_temperature": "24.5",
				"thermofleet/d2/preset_mode":        "none",
				"thermofleet/d2/action":             "cooling",
			},
			presets: []string{"day", "night"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.d.Firmware = tc.fw
			es, err := entities(testTopics, tc.d)
			if err != nil {
				t.Fatal(err)
			}
			var configs []string
			states := map[string]string{}
			for _, e := range es {
				configs = append(configs, e.configTopic)
				maps.Copy(states, e.states)
				for topic := range e.states {
					if !slices.Contains(e.stateTopics, topic) {
						t.Errorf("%s: state %s not among the topics cleared with it", e.configTopic, topic)
					}
				}
			}
			if !slices.Equal(configs, tc.configs) {
				t.Errorf("configs %q, want %q", configs, tc.configs)
			}
			if !maps.Equal(states, tc.states) {
				t.Errorf("states %v\nwant %v", states, tc.states)
			}
			var doc map[string]any
			if err := json.Unmarshal(es[0].config, &doc); err != nil {
				t.Fatal(err)
			}
			checkClimateDoc(t, tc.d.ID, doc, tc.presets)
			dev, _ := doc["device"].(map[string]any)
			if sw, ok := dev["sw_version"]; tc.fw == "" && ok || tc.fw != "" && sw != tc.fw {
				t.Errorf("device block %v, want sw_version %q", dev, tc.fw)
			}
			for _, e := range es[1:] {
				var doc map[string]any
				if err := json.Unmarshal(e.config, &doc); err != nil {
					t.Fatal(err)
				}
				checkSensorDoc(t, tc.d.ID, doc, e.states)
			}
		})
	}
}

// checkClimateDoc holds a climate document to Home Assistant's MQTT
// climate keys.
func checkClimateDoc(t *testing.T, id string, doc map[string]any, presets []string) {
	t.Helper()
	want := map[string]any{
		"name":                      nil,
		"unique_id":                 "thermofleet_" + id + "_climate",
		"availability_mode":         "all",
		"qos":                       1.0,
		"retain":                    false,
		"temperature_unit":          "C",
		"min_temp":                  5.0,
		"max_temp":                  35.0,
		"temp_step":                 0.1,
		"precision":                 0.1,
		"mode_state_topic":          "thermofleet/" + id + "/mode",
		"mode_command_topic":        "thermofleet/" + id + "/mode/set",
		"temperature_state_topic":   "thermofleet/" + id + "/target_temperature",
		"temperature_command_topic": "thermofleet/" + id + "/target_temperature/set",
		"current_temperature_topic": "thermofleet/" + id + "/current_temperature",
		"action_topic":              "thermofleet/" + id + "/action",
		"preset_mode_state_topic":   "thermofleet/" + id + "/preset_mode",
		"preset_mode_command_topic": "thermofleet/" + id + "/preset_mode/set",
	}
	for k, v := range want {
		if got, ok := doc[k]; !ok || got != v {
			t.Errorf("climate %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if got := strs(doc["modes"]); !slices.Equal(got, []string{"off", "heat", "cool", "auto"}) {
		t.Errorf("modes %q", got)
	}
	if got := strs(doc["preset_modes"]); !slices.Equal(got, presets) || slices.Contains(got, "none") {
		t.Errorf("preset_modes %q, want %q (never none)", got, presets)
	}
	checkCommon(t, id, doc, []string{"thermofleet/controller/status", "thermofleet/" + id + "/availability"})
	for k := range doc {
		if strings.Contains(k, "template") {
			t.Errorf("climate has a template %s: state topics are plain values", k)
		}
	}
}

func checkSensorDoc(t *testing.T, id string, doc map[string]any, states map[string]string) {
	t.Helper()
	for k, v := range map[string]any{
		"device_class": "temperature", "state_class": "measurement", "unit_of_measurement": "°C", "qos": 1.0,
	} {
		if doc[k] != v {
			t.Errorf("sensor %s = %v, want %v", k, doc[k], v)
		}
	}
	st, _ := doc["state_topic"].(string)
	if !strings.HasPrefix(st, "thermofleet/"+id+"/sensor/") {
		t.Errorf("sensor state_topic %q", st)
	}
	if v, ok := states[st]; ok && v == "" {
		t.Errorf("sensor state empty")
	}
	avail := []string{"thermofleet/controller/status", "thermofleet/" + id + "/availability", strings.TrimSuffix(st, "temperature") + "availability"}
	checkCommon(t, id, doc, avail)
}

func checkCommon(t *testing.T, id string, doc map[string]any, avail []string) {
	t.Helper()
	dev, _ := doc["device"].(map[string]any)
	if dev["name"] != id || !slices.Equal(strs(dev["identifiers"]), []string{"thermofleet_" + id}) || dev["manufacturer"] == nil || dev["model"] == nil {
		t.Errorf("device block %v", dev)
	}
	list, _ := doc["availability"].([]any)
	var topics []string
	for _, a := range list {
		m, _ := a.(map[string]any)
		if m["payload_available"] != "online" || m["payload_not_available"] != "offline" {
			t.Errorf("availability %v", m)
		}
		topics = append(topics, m["topic"].(string))
	}
	if !slices.Equal(topics, avail) {
		t.Errorf("availability topics %q, want %q", topics, avail)
	}
	if doc["availability_mode"] != "all" {
		t.Errorf("availability_mode %v", doc["availability_mode"])
	}
}

func strs(v any) []string {
	list, _ := v.([]any)
	out := make([]string, 0, len(list))
	for _, x := range list {
		s, _ := x.(string)
		out = append(out, s)
	}
	return out
}

func TestTopics(t *testing.T) {
	for _, tc := range []struct {
		tp         Topics
		climate    string
		sensor     string
		bridge     string
		configs    string
		commands   string
		birth      string
		commandOut string
	}{
		{Topics{"homeassistant", "thermofleet"}, "homeassistant/climate/thermofleet/d1/config", "homeassistant/sensor/thermofleet/d1_a_b/config",
			"thermofleet/controller/status", "homeassistant/+/thermofleet/+/config", "thermofleet/+/+/set", "homeassistant/status", "thermofleet/d1/mode/set"},
		{Topics{"ha", "site/one"}, "ha/climate/site_one/d1/config", "ha/sensor/site_one/d1_a_b/config",
			"site/one/controller/status", "ha/+/site_one/+/config", "site/one/+/+/set", "ha/status", "site/one/d1/mode/set"},
	} {
		got := []string{tc.tp.ClimateConfig("d1"), tc.tp.SensorConfig("d1", "a.b"), tc.tp.BridgeStatus(), tc.tp.ConfigFilter(), tc.tp.CommandFilter(), tc.tp.Birth(), tc.tp.Command("d1", attrMode)}
		want := []string{tc.climate, tc.sensor, tc.bridge, tc.configs, tc.commands, tc.birth, tc.commandOut}
		if !slices.Equal(got, want) {
			t.Errorf("%+v:\n got %q\nwant %q", tc.tp, got, want)
		}
		id, attr, err := tc.tp.parseCommandTopic(tc.commandOut)
		if err != nil || id != "d1" || attr != attrMode {
			t.Errorf("parseCommandTopic(%q) = %q %q %v", tc.commandOut, id, attr, err)
		}
	}
}
