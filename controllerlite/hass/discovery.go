package hass

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

// Defaults of Options.
const (
	DefaultPrefix    = "homeassistant"
	DefaultTopicRoot = "thermofleet"
)

// Payloads of the availability topics.
const (
	Online  = "online"
	Offline = "offline"
)

// The last level of a device's state topics under the bridge's root; a
// command topic is the state topic followed by "/set".
const (
	attrMode         = "mode"
	attrTarget       = "target_temperature"
	attrCurrent      = "current_temperature"
	attrAction       = "action"
	attrPreset       = "preset_mode"
	attrAvailability = "availability"
)

// bridgeLevel is the level of the bridge's own status topic under the
// root: "controller" names no device (protocol.CheckDeviceID refuses it),
// so <root>/controller/status never collides with a device's topics.
const bridgeLevel = protocol.ControllerID

// Topics names every topic of the bridge. Prefix is Home Assistant's
// discovery prefix, Root the first level of the bridge's state and
// command topics (not the fleet's topic root: Home Assistant's broker is
// another broker).
type Topics struct {
	Prefix, Root string
}

// node is the discovery topic's node_id: the root made of the characters
// Home Assistant allows there, so two controllers with different roots
// share one broker.
func (t Topics) node() string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' {
			return r
		}
		return '_'
	}, t.Root)
}

// Birth is where Home Assistant announces it started ("online").
func (t Topics) Birth() string { return t.Prefix + "/status" }

// BridgeStatus is the bridge's availability: its will says "offline".
func (t Topics) BridgeStatus() string { return t.Root + "/" + bridgeLevel + "/status" }

// ClimateConfig is the discovery topic of device id's climate entity.
func (t Topics) ClimateConfig(id string) string {
	return t.Prefix + "/climate/" + t.node() + "/" + id + "/config"
}

// SensorConfig is the discovery topic of the temperature sensor entity of
// device id's sensor name. A sensor name may hold '.', which an object id
// may not: it becomes '_'.
func (t Topics) SensorConfig(id, sensor string) string {
	return t.Prefix + "/sensor/" + t.node() + "/" + id + "_" + strings.ReplaceAll(sensor, ".", "_") + "/config"
}

// ConfigFilter matches every discovery topic of this bridge.
func (t Topics) ConfigFilter() string { return t.Prefix + "/+/" + t.node() + "/+/config" }

// State is device id's state topic of attr: a plain value, retained.
func (t Topics) State(id, attr string) string { return t.Root + "/" + id + "/" + attr }

// Command is device id's command topic of attr.
func (t Topics) Command(id, attr string) string { return t.State(id, attr) + "/set" }

// CommandFilter matches every command topic.
func (t Topics) CommandFilter() string { return t.Root + "/+/+/set" }

// sensorState and sensorAvailability are a sensor's state topics.
func (t Topics) sensorState(id, sensor string) string {
	return t.Root + "/" + id + "/sensor/" + sensor + "/temperature"
}

func (t Topics) sensorAvailability(id, sensor string) string {
	return t.Root + "/" + id + "/sensor/" + sensor + "/availability"
}

// Home Assistant's MQTT discovery documents, with the full key names of
// its climate and sensor platforms. Every state topic carries a plain
// value, so no template is needed.

type availability struct {
	Topic               string `json:"topic"`
	PayloadAvailable    string `json:"payload_available"`
	PayloadNotAvailable string `json:"payload_not_available"`
}

type deviceInfo struct {
	Identifiers  []string `json:"identifiers"`
	Name         string   `json:"name"`
	Manufacturer string   `json:"manufacturer"`
	Model        string   `json:"model"`
	// SWVersion is the firmware version the device reports (on the
	// climate entity's block; Home Assistant merges a device's blocks).
	SWVersion string `json:"sw_version,omitempty"`
}

type origin struct {
	Name string `json:"name"`
}

type climateDoc struct {
	// Name is null: the climate entity is the device itself, named by
	// the device block.
	Name             *string        `json:"name"`
	UniqueID         string         `json:"unique_id"`
	Device           deviceInfo     `json:"device"`
	Origin           origin         `json:"origin"`
	Availability     []availability `json:"availability"`
	AvailabilityMode string         `json:"availability_mode"`
	QoS              int            `json:"qos"`
	// Retain false: Home Assistant's commands are not retained, so a
	// stale one is never replayed when the bridge reconnects.
	Retain bool `json:"retain"`

	Modes            []string `json:"modes"`
	ModeStateTopic   string   `json:"mode_state_topic"`
	ModeCommandTopic string   `json:"mode_command_topic"`

	TemperatureStateTopic   string  `json:"temperature_state_topic"`
	TemperatureCommandTopic string  `json:"temperature_command_topic"`
	CurrentTemperatureTopic string  `json:"current_temperature_topic"`
	TemperatureUnit         string  `json:"temperature_unit"`
	MinTemp                 float64 `json:"min_temp"`
	MaxTemp                 float64 `json:"max_temp"`
	TempStep                float64 `json:"temp_step"`
	Precision               float64 `json:"precision"`

	ActionTopic string `json:"action_topic"`

	PresetModes            []string `json:"preset_modes"`
	PresetModeStateTopic   string   `json:"preset_mode_state_topic"`
	PresetModeCommandTopic string   `json:"preset_mode_command_topic"`
}

type sensorDoc struct {
	Name               string         `json:"name"`
	UniqueID           string         `json:"unique_id"`
	Device             deviceInfo     `json:"device"`
	Origin             origin         `json:"origin"`
	Availability       []availability `json:"availability"`
	AvailabilityMode   string         `json:"availability_mode"`
	QoS                int            `json:"qos"`
	StateTopic         string         `json:"state_topic"`
	DeviceClass        string         `json:"device_class"`
	StateClass         string         `json:"state_class"`
	UnitOfMeasurement  string         `json:"unit_of_measurement"`
	SuggestedPrecision int            `json:"suggested_display_precision"`
}

// entity is what the bridge publishes for one Home Assistant entity: its
// discovery document and the values of its state topics known now. A
// value not known (no telemetry yet, a faulty sensor's temperature) is
// left out, and Home Assistant keeps the last one it had.
type entity struct {
	configTopic string
	config      []byte
	states      map[string]string
	// stateTopics are all its state topics, known or not: cleared with
	// the entity when it goes.
	stateTopics []string
}

// entities returns the entities of a device in the fleet: its climate
// entity and one temperature sensor per sensor its telemetry reports.
func entities(t Topics, d fleet.Device) ([]entity, error) {
	var tel *protocol.Telemetry
	if len(d.Telemetry) > 0 && string(d.Telemetry) != "null" {
		var v protocol.Telemetry
		if err := json.Unmarshal(d.Telemetry, &v); err != nil {
			return nil, fmt.Errorf("telemetry of %s: %w", d.ID, err)
		}
		tel = &v
	}
	c, err := climateEntity(t, d, tel)
	if err != nil {
		return nil, err
	}
	out := []entity{c}
	if tel != nil {
		for _, name := range slices.Sorted(maps.Keys(tel.Sensors)) {
			s, err := sensorEntity(t, d.ID, name, tel.Sensors[name])
			if err != nil {
				return nil, err
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// device is the device block: its identifier carries the root, like the
// unique ids, so two fleets with the same device ids stay apart.
func (t Topics) device(id string) deviceInfo {
	return deviceInfo{Identifiers: []string{t.uniqueID(id)}, Name: id, Manufacturer: "thermofleet", Model: "thermostat"}
}

// uniqueID is unique across Home Assistant: the bridge's root keeps two
// fleets apart.
func (t Topics) uniqueID(parts ...string) string {
	return t.node() + "_" + strings.Join(parts, "_")
}

func (t Topics) availability(id string, more ...string) []availability {
	topics := append([]string{t.BridgeStatus(), t.State(id, attrAvailability)}, more...)
	out := make([]availability, len(topics))
	for i, topic := range topics {
		out[i] = availability{Topic: topic, PayloadAvailable: Online, PayloadNotAvailable: Offline}
	}
	return out
}

// presetModes are the device's presets for Home Assistant, which adds its
// own "none" (it refuses one in the list): protocol's "none" is the same.
func presetModes(d fleet.Device) []string {
	return protocol.PresetsIn(d.Props.Values()).Names()
}

func climateEntity(t Topics, d fleet.Device, tel *protocol.Telemetry) (entity, error) {
	id := d.ID
	dev := t.device(id)
	dev.SWVersion = d.Firmware
	doc := climateDoc{
		UniqueID:         t.uniqueID(id, "climate"),
		Device:           dev,
		Origin:           origin{Name: "thermofleet controllerlite"},
		Availability:     t.availability(id),
		AvailabilityMode: "all",
		QoS:              1,

		Modes:            slices.Clone(protocol.Modes),
		ModeStateTopic:   t.State(id, attrMode),
		ModeCommandTopic: t.Command(id, attrMode),

		TemperatureStateTopic:   t.State(id, attrTarget),
		TemperatureCommandTopic: t.Command(id, attrTarget),
		CurrentTemperatureTopic: t.State(id, attrCurrent),
		TemperatureUnit:         "C",
		MinTemp:                 protocol.MinSetpoint,
		MaxTemp:                 protocol.MaxSetpoint,
		TempStep:                0.1,
		Precision:               0.1,

		ActionTopic: t.State(id, attrAction),

		PresetModes:            presetModes(d),
		PresetModeStateTopic:   t.State(id, attrPreset),
		PresetModeCommandTopic: t.Command(id, attrPreset),
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return entity{}, fmt.Errorf("discovery document of %s: %w", id, err)
	}
	e := entity{configTopic: t.ClimateConfig(id), config: b, states: map[string]string{}}
	for _, a := range []string{attrAvailability, attrMode, attrTarget, attrPreset, attrCurrent, attrAction} {
		e.stateTopics = append(e.stateTopics, t.State(id, a))
	}
	e.states[t.State(id, attrAvailability)] = availabilityOf(d.Online)
	mode, hasMode := d.Props.Mode()
	if hasMode {
		e.states[t.State(id, attrMode)] = mode
	}
	if sp, ok := d.Props.Setpoint(); ok {
		e.states[t.State(id, attrTarget)] = number(sp)
	}
	preset, ok := d.Props.Preset()
	if !ok {
		preset = protocol.PresetNone
	}
	e.states[t.State(id, attrPreset)] = preset
	if tel != nil {
		if tel.TempC != nil {
			e.states[t.State(id, attrCurrent)] = number(*tel.TempC)
		}
		action := tel.Action
		if action == "" && hasMode { // a firmware from before "action"
			action = protocol.ActionOf(tel.Heat, tel.Cool, mode)
		}
		if action != "" {
			e.states[t.State(id, attrAction)] = action
		}
	}
	return e, nil
}

func sensorEntity(t Topics, id, name string, r protocol.SensorReport) (entity, error) {
	doc := sensorDoc{
		Name:               name + " temperature",
		UniqueID:           t.uniqueID(id, "sensor", name, "temperature"),
		Device:             t.device(id),
		Origin:             origin{Name: "thermofleet controllerlite"},
		Availability:       t.availability(id, t.sensorAvailability(id, name)),
		AvailabilityMode:   "all",
		QoS:                1,
		StateTopic:         t.sensorState(id, name),
		DeviceClass:        "temperature",
		StateClass:         "measurement",
		UnitOfMeasurement:  "°C",
		SuggestedPrecision: 1,
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return entity{}, fmt.Errorf("discovery document of %s sensor %s: %w", id, name, err)
	}
	e := entity{
		configTopic: t.SensorConfig(id, name), config: b, states: map[string]string{},
		stateTopics: []string{t.sensorAvailability(id, name), t.sensorState(id, name)},
	}
	ok := r.OK && r.TempC != nil
	e.states[t.sensorAvailability(id, name)] = availabilityOf(ok)
	if r.TempC != nil {
		e.states[t.sensorState(id, name)] = number(*r.TempC)
	}
	return e, nil
}

func availabilityOf(up bool) string {
	if up {
		return Online
	}
	return Offline
}

// number renders a temperature as Home Assistant parses it: "21.5", "21".
func number(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }
