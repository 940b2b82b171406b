package e2e

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// homeAssistant plays Home Assistant on its own broker, knowing nothing
// of the bridge but what its discovery documents say: it reads every
// topic, mode and preset from them, as Home Assistant's MQTT climate and
// sensor platforms do.
type homeAssistant struct {
	t *testing.T
	c *testenv.Client
}

// discovery waits for a (non-empty) discovery document on topic and returns
// it decoded, subscribing to every state and availability topic it names.
func (ha *homeAssistant) discovery(topic string) map[string]any {
	ha.t.Helper()
	m, _ := ha.c.WaitMatch(ha.t, "discovery document on "+topic, func(m testenv.Message) bool {
		return m.Topic == topic && len(m.Payload) > 0
	})
	var doc map[string]any
	if err := json.Unmarshal(m.Payload, &doc); err != nil {
		ha.t.Fatalf("discovery document on %s: %v: %s", topic, err, m.Payload)
	}
	for k, v := range doc {
		if s, ok := v.(string); ok && strings.HasSuffix(k, "_topic") && !strings.HasSuffix(k, "_command_topic") {
			ha.c.Subscribe(ha.t, s, 1)
		}
	}
	for _, a := range list(doc["availability"]) {
		ha.c.Subscribe(ha.t, str(a.(map[string]any)["topic"]), 1)
	}
	return doc
}

// state is the latest payload on the topic doc names under key.
func (ha *homeAssistant) state(doc map[string]any, key string) string {
	topic := str(doc[key])
	if topic == "" {
		ha.t.Fatalf("the discovery document has no %s", key)
	}
	return ha.c.Last(topic)
}

// count is how many messages arrived on the topic doc names under key.
func (ha *homeAssistant) count(doc map[string]any, key string) int {
	n := 0
	for _, m := range ha.c.Messages() {
		if m.Topic == str(doc[key]) {
			n++
		}
	}
	return n
}

// available is Home Assistant's availability of an entity: every topic of
// its availability list last said payload_available (mode "all").
func (ha *homeAssistant) available(doc map[string]any) (bool, string) {
	if doc["availability_mode"] != "all" {
		ha.t.Fatalf("availability_mode %v", doc["availability_mode"])
	}
	var seen []string
	up := true
	for _, a := range list(doc["availability"]) {
		av := a.(map[string]any)
		last := ha.c.Last(str(av["topic"]))
		seen = append(seen, str(av["topic"])+"="+last)
		up = up && last == str(av["payload_available"])
	}
	return up, strings.Join(seen, " ")
}

// command publishes as Home Assistant does: on the command topic doc names
// under key, with the document's qos and retain.
func (ha *homeAssistant) command(doc map[string]any, key, payload string) {
	ha.t.Helper()
	qos, _ := doc["qos"].(float64)
	retain, _ := doc["retain"].(bool)
	ha.c.Publish(ha.t, str(doc[key]), byte(qos), retain, []byte(payload))
}

func list(v any) []any { l, _ := v.([]any); return l }
func str(v any) string { s, _ := v.(string); return s }

// TestHomeAssistantBridge runs the controller with --ha-broker against a
// real Mosquitto with password logins standing in for Home Assistant's
// add-on, and a real thermostat behind the controller: Home Assistant sees
// the thermostat follow, its commands reach the thermostat through the
// controller, a bad command changes nothing, its birth message brings the
// discovery again, and the thermostat's and the bridge's going away make
// the entity unavailable.
func TestHomeAssistantBridge(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	haBroker := testenv.StartMosquitto(t, nil, &testenv.MosquittoOptions{
		Users: map[string]string{"thermofleet": "ctl pass:1", "homeassistant": "ha-pass"},
	})
	pwFile := filepath.Join(t.TempDir(), "ha-password")
	if err := os.WriteFile(pwFile, []byte("ctl pass:1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ha := &homeAssistant{t: t, c: testenv.Connect(t, haBroker.URL(), testenv.ClientOptions{
		ClientID: "homeassistant", Username: "homeassistant", Password: "ha-pass"})}
	ha.c.Subscribe(t, "homeassistant/#", 1)

	w := newBareWorld(t, embedded)
	ctl := startBinController(t, w, t.TempDir(),
		"--ha-broker", haBroker.URL(), "--ha-username", "thermofleet", "--ha-password-file", pwFile)
	d1 := newBinThermostat(t, w, "d1", "--telemetry-interval", "1s").start()
	d1.synced()

	climate := ha.discovery("homeassistant/climate/thermofleet/d1/config")
	if got := strs(climate["modes"]); !slices.Equal(got, protocol.Modes) {
		t.Errorf("modes %q, want %q", got, protocol.Modes)
	}
	presets := strs(climate["preset_modes"])
	if !slices.Equal(presets, protocol.DefaultPresets.Names()) {
		t.Errorf("preset_modes %q, want the thermostat's %q", presets, protocol.DefaultPresets.Names())
	}
	if climate["min_temp"] != 5.0 || climate["max_temp"] != 35.0 || climate["temp_step"] != 0.1 || climate["temperature_unit"] != "C" {
		t.Errorf("temperature range: %v..%v step %v unit %v", climate["min_temp"], climate["max_temp"], climate["temp_step"], climate["temperature_unit"])
	}
	room := ha.discovery("homeassistant/sensor/thermofleet/d1_room/config")
	if room["device_class"] != "temperature" || room["unit_of_measurement"] != "°C" {
		t.Errorf("sensor: %v", room)
	}
	eventually(t, "climate and sensor available", func() (bool, string) {
		a, sa := ha.available(climate)
		b, sb := ha.available(room)
		return a && b, sa + " / " + sb
	})

	// What Home Assistant shows follows the thermostat.
	follows := func(what string) {
		t.Helper()
		eventually(t, "Home Assistant shows the thermostat's state: "+what, func() (bool, string) {
			st, err := d1.status()
			if err != nil {
				return false, err.Error()
			}
			mode, _ := st.Props.Mode()
			sp, _ := st.Props.Setpoint()
			preset, ok := st.Props.Preset()
			if !ok {
				preset = protocol.PresetNone // never written
			}
			want := map[string]string{
				"mode_state_topic":        mode,
				"temperature_state_topic": strconv.FormatFloat(sp, 'f', -1, 64),
				"preset_mode_state_topic": preset,
				"action_topic":            protocol.ActionOf(st.Outputs.Heat, st.Outputs.Cool, mode),
			}
			var diff []string
			for key, v := range want {
				if got := ha.state(climate, key); got != v {
					diff = append(diff, fmt.Sprintf("%s %q want %q", key, got, v))
				}
			}
			for key, doc := range map[string]map[string]any{"current_temperature_topic": climate, "state_topic": room} {
				got, err := strconv.ParseFloat(ha.state(doc, key), 64)
				if err != nil || st.TempC == nil || math.Abs(got-*st.TempC) > 0.2 {
					diff = append(diff, fmt.Sprintf("%s %v want about %v", key, got, st.TempC))
				}
			}
			return len(diff) == 0, strings.Join(diff, "; ")
		})
	}
	follows("at start")
	command(t, d1.bin, "set", "--control-socket", d1.socket, "--mode", "off")
	follows("mode off on the thermostat")
	if got := ha.state(climate, "action_topic"); got != protocol.ActionOff {
		t.Errorf("action %q in mode off", got)
	}
	command(t, d1.bin, "set", "--control-socket", d1.socket, "--mode", "heat", "--setpoint", "30")
	follows("heat to 30 on the thermostat")

	// Home Assistant's commands reach the thermostat.
	thermostatHas := func(what string, check func(p protocol.Props) bool) {
		t.Helper()
		eventually(t, "thermostat "+what, func() (bool, string) {
			st, err := d1.status()
			if err != nil {
				return false, err.Error()
			}
			return check(st.Props), fmt.Sprintf("%v", st.Props)
		})
	}
	ha.command(climate, "temperature_command_topic", "22.5")
	thermostatHas("at 22.5", func(p protocol.Props) bool { sp, _ := p.Setpoint(); return sp == 22.5 })
	follows("temperature from Home Assistant")
	ha.command(climate, "mode_command_topic", "cool")
	thermostatHas("cooling", func(p protocol.Props) bool { m, _ := p.Mode(); return m == "cool" })
	follows("mode from Home Assistant")
	ha.command(climate, "preset_mode_command_topic", "eco")
	thermostatHas("on eco", func(p protocol.Props) bool {
		pr, _ := p.Preset()
		sp, _ := p.Setpoint()
		return pr == "eco" && sp == protocol.DefaultPresets["eco"]
	})
	follows("preset from Home Assistant")
	ha.command(climate, "preset_mode_command_topic", "none") // Home Assistant's no-preset
	thermostatHas("on no preset", func(p protocol.Props) bool { pr, _ := p.Preset(); return pr == protocol.PresetNone })
	follows("no preset from Home Assistant")

	// A bad command is refused: no controller write, and the state is
	// published again so Home Assistant's control snaps back.
	_, before := d1.synced()
	for _, bad := range []struct{ key, payload, state string }{
		{"temperature_command_topic", "99", "temperature_state_topic"},
		{"temperature_command_topic", "warm", "temperature_state_topic"},
		{"mode_command_topic", "dry", "mode_state_topic"},
		{"preset_mode_command_topic", "vacation", "preset_mode_state_topic"},
	} {
		n, was := ha.count(climate, bad.state), ha.state(climate, bad.state)
		ha.command(climate, bad.key, bad.payload)
		eventually(t, fmt.Sprintf("%s %q refused and the state published again", bad.key, bad.payload), func() (bool, string) {
			return ha.count(climate, bad.state) > n, fmt.Sprintf("%d messages on %s", ha.count(climate, bad.state), str(climate[bad.state]))
		})
		if got := ha.state(climate, bad.state); got != was {
			t.Errorf("after %s %q: %s %q, was %q", bad.key, bad.payload, bad.state, got, was)
		}
	}
	if _, after := d1.synced(); after.VC != before.VC || !sameProps(after.Props, before.Props) {
		t.Errorf("bad commands changed the device: %v %v, was %v %v", after.VC, after.Props, before.VC, before.Props)
	}

	// Home Assistant restarted: its birth message brings every document
	// and state again.
	ha.c.Reset()
	ha.c.Publish(t, "homeassistant/status", 1, false, []byte("online"))
	for _, topic := range []string{"homeassistant/climate/thermofleet/d1/config", "homeassistant/sensor/thermofleet/d1_room/config"} {
		ha.c.WaitMatch(t, "discovery again after the birth message: "+topic, func(m testenv.Message) bool {
			return m.Topic == topic && len(m.Payload) > 0
		})
	}
	follows("after Home Assistant's birth message")

	// The thermostat stops: its entities become unavailable.
	d1.stop()
	eventually(t, "climate and sensor unavailable", func() (bool, string) {
		a, sa := ha.available(climate)
		b, sb := ha.available(room)
		return !a && !b, sa + " / " + sb
	})

	// The controller stops: the bridge's own availability topic, the one
	// still available, says so (its farewell, or its will).
	var still []string
	for _, a := range list(climate["availability"]) {
		av := a.(map[string]any)
		if topic := str(av["topic"]); ha.c.Last(topic) == str(av["payload_available"]) {
			still = append(still, topic)
		}
	}
	if len(still) != 1 {
		t.Fatalf("availability topics still available with the thermostat stopped: %q, want the bridge's", still)
	}
	ctl.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-ctl.done:
	case <-time.After(waitTimeout):
		t.Fatal("controller did not stop on SIGTERM")
	}
	ha.c.WaitPayload(t, still[0], "offline")
}

func strs(v any) []string {
	var out []string
	for _, x := range list(v) {
		out = append(out, str(x))
	}
	return out
}
