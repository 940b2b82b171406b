package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"time"
	"unicode/utf8"
)

// Version is the protocol version every payload carries in "v".
const Version = 1

// MaxPayload is the largest payload accepted, in bytes.
const MaxPayload = 4096

// MaxCounter is the largest clock or stamp counter accepted (PROTOCOL.md
// "Bad input"): 2^52, half the largest integer a JSON number holds exactly
// in every language (2^53-1). The room above it means a side that merged
// the largest counter a peer may send can still count its own events
// exactly, so no message leaves a receiver unable to tick.
const MaxCounter = 1 << 52

// Sources of a write, carried in "src". Informational: no rule reads them.
const (
	SrcController = "controller"
	SrcButton     = "button"
	SrcLocal      = "local"
	SrcSchedule   = "schedule"
	SrcBoot       = "boot"
)

// ErrInvalid is wrapped by every error for a message rejected whole.
var ErrInvalid = errors.New("invalid message")

// Message is a Command (controller to device) or an Event (device to
// controller); both have this shape.
type Message struct {
	V     int    `json:"v"`
	VC    Clock  `json:"vc"`
	Props Props  `json:"props"`
	Src   string `json:"src,omitempty"`
}

// Encode renders a message as its JSON payload.
func (m Message) Encode() ([]byte, error) {
	if m.Props == nil {
		m.Props = Props{}
	}
	m.V = Version
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode message: %w", err)
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("encode message: %d bytes, over the %d byte limit", len(b), MaxPayload)
	}
	return b, nil
}

// PropIssue is a property of an accepted message that was not applied: it
// was rejected (bad value or stamp) or ignored (unknown to this version).
type PropIssue struct {
	Name    string
	Reason  string
	Unknown bool // ignored as unknown, rather than rejected
}

func (p PropIssue) String() string { return p.Name + ": " + p.Reason }

// DecodeMessage parses and validates a Command or Event payload.
//
// A message that fails the rules of PROTOCOL.md "Bad input" is rejected
// whole with an error wrapping ErrInvalid. A property that is invalid on its
// own is left out of the returned message and reported as a PropIssue; the
// message itself still stands and counts as a receive.
func DecodeMessage(payload []byte) (Message, []PropIssue, error) {
	top, err := decodeTop(payload)
	if err != nil {
		return Message{}, nil, err
	}
	var m Message
	m.V = Version
	raw, ok := top["vc"]
	if !ok {
		return Message{}, nil, invalid("no vc")
	}
	if m.VC, err = decodeClock(raw); err != nil {
		return Message{}, nil, invalid("vc: %v", err)
	}
	m.Props = Props{}
	var issues []PropIssue
	if raw, ok := top["props"]; ok {
		var props map[string]json.RawMessage
		if err := json.Unmarshal(raw, &props); err != nil || props == nil {
			return Message{}, nil, invalid("props is not an object")
		}
		names := make([]string, 0, len(props))
		for name := range props {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			p, err := decodeProp(name, props[name], m.VC)
			if err != nil {
				issues = append(issues, PropIssue{Name: name, Reason: err.Error(), Unknown: !Known(name)})
				continue
			}
			m.Props[name] = p
		}
	}
	if raw, ok := top["src"]; ok {
		_ = json.Unmarshal(raw, &m.Src) // informational: a src that is not a string is dropped
	}
	return m, issues, nil
}

func invalid(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, args...))
}

// decodeTop checks size, JSON syntax, the single object and "v".
func decodeTop(payload []byte) (map[string]json.RawMessage, error) {
	if len(payload) > MaxPayload {
		return nil, invalid("%d bytes, over the %d byte limit", len(payload), MaxPayload)
	}
	if !utf8.Valid(payload) {
		return nil, invalid("not UTF-8")
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	var top map[string]json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return nil, invalid("not a JSON object: %v", err)
	}
	if top == nil {
		return nil, invalid("not a JSON object")
	}
	if len(bytes.TrimSpace(payload[dec.InputOffset():])) > 0 {
		return nil, invalid("data after the JSON object")
	}
	raw, ok := top["v"]
	if !ok {
		return nil, invalid("no v")
	}
	v, err := decodeCounter(raw)
	if err != nil || v != Version {
		return nil, invalid("v is %s, want %d", bytes.TrimSpace(raw), Version)
	}
	return top, nil
}

func decodeProp(name string, raw json.RawMessage, vc Clock) (Prop, error) {
	if !Known(name) {
		return Prop{}, errors.New("unknown property, ignored")
	}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil || obj == nil {
		return Prop{}, errors.New(`not an object with "val" and "w"`)
	}
	rawW, ok := obj["w"]
	if !ok {
		return Prop{}, errors.New("no write stamp w")
	}
	w, err := decodeClock(rawW)
	if err != nil {
		return Prop{}, fmt.Errorf("w: %v", err)
	}
	// A stamp is the clock of an earlier write of the sender, so it never
	// exceeds the clock of the message that carries it; one that does would
	// plant a stamp beyond the receiver's clock.
	if !w.LessEq(vc) {
		return Prop{}, fmt.Errorf("w %v is beyond the message clock %v", w, vc)
	}
	rawVal, ok := obj["val"]
	if !ok {
		return Prop{}, errors.New("no val")
	}
	val, err := decodeValue(rawVal)
	if err != nil {
		return Prop{}, fmt.Errorf("val: %v", err)
	}
	norm, err := Normalize(name, val)
	if err != nil {
		return Prop{}, err
	}
	return Prop{Val: norm, W: w}, nil
}

// decodeValue decodes one JSON value as a json.Decoder with UseNumber
// does (a number is its json.Number literal), without one: raw is part of
// a document already parsed, so it is valid JSON, and a decoder per
// property (its buffer of 512 bytes or more) was most of what decoding a
// message allocated, and a returning fleet's Events are decoded at once.
func decodeValue(raw json.RawMessage) (any, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return nil, errors.New("no value")
	}
	switch c := raw[0]; {
	case c == '-' || c >= '0' && c <= '9':
		return json.Number(raw), nil
	case c == '"':
		var s string
		if err := json.Unmarshal(raw, &s); err != nil {
			return nil, err
		}
		return s, nil
	case bytes.Equal(raw, []byte("true")):
		return true, nil
	case bytes.Equal(raw, []byte("false")):
		return false, nil
	case bytes.Equal(raw, []byte("null")):
		return nil, nil
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	return v, nil
}

// decodeClock parses a clock: exactly two non-negative integers. A number
// written with a fraction or an exponent (2.0, 2e0) is not an integer.
func decodeClock(raw json.RawMessage) (Clock, error) {
	// Two scalars, the usual "[12,40]", are read without decoding an
	// array: with no nested value or string, the one comma splits them
	// as the decoder would.
	if t := bytes.TrimSpace(raw); len(t) > 2 && t[0] == '[' && t[len(t)-1] == ']' {
		inner := t[1 : len(t)-1]
		if a, b, ok := bytes.Cut(inner, []byte(",")); ok && bytes.Count(inner, []byte(",")) == 1 && !bytes.ContainsAny(inner, `[{"`) {
			var c Clock
			var err error
			if c[0], err = decodeCounter(a); err != nil {
				return Clock{}, err
			}
			if c[1], err = decodeCounter(b); err != nil {
				return Clock{}, err
			}
			return c, nil
		}
	}
	var parts []json.RawMessage
	if err := json.Unmarshal(raw, &parts); err != nil || parts == nil {
		return Clock{}, errors.New("not an array of two integers")
	}
	if len(parts) != 2 {
		return Clock{}, fmt.Errorf("%d elements, want 2", len(parts))
	}
	var c Clock
	for i, p := range parts {
		n, err := decodeCounter(p)
		if err != nil {
			return Clock{}, err
		}
		c[i] = n
	}
	return c, nil
}

func decodeCounter(raw json.RawMessage) (uint64, error) {
	s := string(bytes.TrimSpace(raw))
	if s == "" || (len(s) > 1 && s[0] == '0') {
		return 0, fmt.Errorf("%q is not a non-negative integer", s)
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Errorf("%s is not a non-negative integer", s)
		}
	}
	n, err := strconv.ParseUint(s, 10, 64)
	if err != nil || n > MaxCounter {
		return 0, fmt.Errorf("%s is over the largest counter %d", s, uint64(MaxCounter))
	}
	return n, nil
}

// Telemetry is a device's periodic report. It is not clocked.
type Telemetry struct {
	V           int       `json:"v"`
	TS          time.Time `json:"ts"`
	TempC       *float64  `json:"temp_c,omitempty"` // absent while no valid reading exists
	HumidityPct *float64  `json:"humidity_pct,omitempty"`
	Heat        bool      `json:"heat"`
	Cool        bool      `json:"cool"`
	SensorOK    bool      `json:"sensor_ok"`
	// Action is what the outputs are doing, in Home Assistant's
	// hvac_action words (ActionHeating...).
	Action string `json:"action,omitempty"`
	// Sensors are every configured sensor by its configured name.
	Sensors map[string]SensorReport `json:"sensors,omitempty"`
	// Next is the schedule's next entry while the schedule is enabled.
	Next *Next `json:"next,omitempty"`
	// Alerts are the codes of the device's conditions that need a person
	// (see AlertCodes); absent when there are none.
	Alerts []string `json:"alerts,omitempty"`
	// CertExpires is when the device's certificate ends (its NotAfter):
	// how the controller learns it through any broker.
	CertExpires *time.Time `json:"cert_expires,omitempty"`
	// Firmware is the version of the thermostat firmware running
	// (optional, docs/ota.md).
	Firmware string `json:"firmware,omitempty"`
}

// Actions of telemetry's "action".
const (
	ActionHeating = "heating"
	ActionCooling = "cooling"
	ActionIdle    = "idle"
	ActionOff     = "off"
)

// ActionOf is the action for the outputs as driven and the mode in force:
// a relay on says what it does (frost protection heats in mode off too);
// otherwise off in mode off, else idle.
func ActionOf(heat, cool bool, mode string) string {
	switch {
	case heat:
		return ActionHeating
	case cool:
		return ActionCooling
	case mode == ModeOff:
		return ActionOff
	}
	return ActionIdle
}

// SensorReport is one sensor in telemetry's "sensors".
type SensorReport struct {
	TempC       *float64 `json:"temp_c,omitempty"` // absent while OK is false
	HumidityPct *float64 `json:"humidity_pct,omitempty"`
	OK          bool     `json:"ok"`
}

// Next is the schedule's next entry in telemetry: when, and what it will
// set (the preset's temperature for a preset entry, with the preset).
type Next struct {
	At        time.Time `json:"at"`
	SetpointC float64   `json:"setpoint_c"`
	Preset    string    `json:"preset,omitempty"`
}

// MaxSensors bounds telemetry's "sensors"; sensor names are those a
// configuration may give.
const MaxSensors = 16

var sensorNameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$`)

// CheckSensorName reports whether name may name a sensor: it is a key of
// telemetry's "sensors", so the configuration refuses anything else.
func CheckSensorName(name string) error {
	if !sensorNameRE.MatchString(name) {
		return fmt.Errorf("sensor name %q must be 1-32 characters of letters, digits, '_', '.' or '-'", name)
	}
	return nil
}

// Encode renders telemetry as its JSON payload.
func (t Telemetry) Encode() ([]byte, error) {
	t.V = Version
	t.TS = t.TS.UTC().Truncate(time.Millisecond)
	b, err := json.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("encode telemetry: %w", err)
	}
	return b, nil
}

// DecodeTelemetry parses and validates a telemetry payload.
func DecodeTelemetry(payload []byte) (Telemetry, error) {
	top, err := decodeTop(payload)
	if err != nil {
		return Telemetry{}, err
	}
	var t Telemetry
	if err := json.Unmarshal(payload, &t); err != nil {
		return Telemetry{}, invalid("telemetry: %v", err)
	}
	if _, ok := top["ts"]; !ok || t.TS.IsZero() {
		return Telemetry{}, invalid("telemetry: no ts")
	}
	if t.TempC != nil && (*t.TempC < -100 || *t.TempC > 200) {
		return Telemetry{}, invalid("telemetry: temp_c %v out of range", *t.TempC)
	}
	if t.HumidityPct != nil && (*t.HumidityPct < 0 || *t.HumidityPct > 100) {
		return Telemetry{}, invalid("telemetry: humidity_pct %v out of range", *t.HumidityPct)
	}
	switch t.Action {
	case "", ActionHeating, ActionCooling, ActionIdle, ActionOff:
	default:
		return Telemetry{}, invalid("telemetry: action %q is not heating, cooling, idle or off", t.Action)
	}
	if len(t.Firmware) > 64 {
		return Telemetry{}, invalid("telemetry: firmware of %d bytes, at most 64", len(t.Firmware))
	}
	if len(t.Sensors) > MaxSensors {
		return Telemetry{}, invalid("telemetry: %d sensors, at most %d", len(t.Sensors), MaxSensors)
	}
	for name, s := range t.Sensors {
		if !sensorNameRE.MatchString(name) {
			return Telemetry{}, invalid("telemetry: sensor name %q does not match %s", name, sensorNameRE)
		}
		if s.TempC != nil && (*s.TempC < -100 || *s.TempC > 200) {
			return Telemetry{}, invalid("telemetry: sensors.%s.temp_c %v out of range", name, *s.TempC)
		}
		if s.HumidityPct != nil && (*s.HumidityPct < 0 || *s.HumidityPct > 100) {
			return Telemetry{}, invalid("telemetry: sensors.%s.humidity_pct %v out of range", name, *s.HumidityPct)
		}
	}
	if n := t.Next; n != nil {
		if n.At.IsZero() {
			return Telemetry{}, invalid("telemetry: next without at")
		}
		if _, err := setpointValue(n.SetpointC); err != nil {
			return Telemetry{}, invalid("telemetry: next.setpoint_c %v", err)
		}
		if n.Preset != "" {
			if err := CheckPresetName(n.Preset); err != nil {
				return Telemetry{}, invalid("telemetry: next: %v", err)
			}
		}
	}
	if len(t.Alerts) > MaxAlerts {
		return Telemetry{}, invalid("telemetry: %d alerts, at most %d", len(t.Alerts), MaxAlerts)
	}
	for _, code := range t.Alerts {
		if err := CheckAlertCode(code); err != nil {
			return Telemetry{}, invalid("telemetry: %v", err)
		}
	}
	return t, nil
}

// Status says whether a device is online; its offline form is the MQTT will.
type Status struct {
	V      int  `json:"v"`
	Online bool `json:"online"`
	// Firmware is the version of the thermostat firmware running
	// (optional, in the online status only: the will is fixed at connect).
	Firmware string `json:"firmware,omitempty"`
}

// Encode renders a status as its JSON payload.
func (s Status) Encode() []byte {
	switch {
	case s.Online && s.Firmware != "":
		b, _ := json.Marshal(struct {
			V        int    `json:"v"`
			Online   bool   `json:"online"`
			Firmware string `json:"firmware"`
		}{Version, true, s.Firmware})
		return b
	case s.Online:
		return []byte(`{"v":1,"online":true}`)
	}
	return []byte(`{"v":1,"online":false}`)
}

// DecodeStatus parses and validates a status payload.
func DecodeStatus(payload []byte) (Status, error) {
	top, err := decodeTop(payload)
	if err != nil {
		return Status{}, err
	}
	raw, ok := top["online"]
	if !ok {
		return Status{}, invalid("status: no online")
	}
	s := Status{V: Version}
	if err := json.Unmarshal(raw, &s.Online); err != nil {
		return Status{}, invalid("status: online is not a boolean")
	}
	if raw, ok := top["firmware"]; ok {
		// Optional and informational: a malformed one is dropped, the
		// status stands.
		var fw string
		if json.Unmarshal(raw, &fw) == nil && len(fw) <= 64 {
			s.Firmware = fw
		}
	}
	return s, nil
}
