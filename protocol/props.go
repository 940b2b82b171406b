package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
)

// Property names of version 1.
const (
	PropSetpoint = "setpoint_c"
	PropMode     = "mode"
)

// Modes a thermostat runs in.
const (
	ModeOff  = "off"
	ModeHeat = "heat"
	ModeCool = "cool"
	ModeAuto = "auto"
)

// Setpoint limits in degrees Celsius.
const (
	MinSetpoint = 5.0
	MaxSetpoint = 35.0
)

// Modes lists the valid modes in the order a mode button cycles them.
var Modes = []string{ModeOff, ModeHeat, ModeCool, ModeAuto}

// Names lists the properties of this protocol version.
var Names = []string{PropMode, PropPreset, PropPresets, PropSchedule, PropSetpoint}

// Known reports whether name is a property of this protocol version.
func Known(name string) bool { return slices.Contains(Names, name) }

// Normalize validates a property value and returns it in canonical form: a
// float64 rounded to 0.1 for setpoint_c, a string for mode and preset,
// Presets for presets and Schedule for schedule. It accepts what JSON
// decodes (numbers as float64 or json.Number, objects as map[string]any)
// as well as the canonical types. The error says why a value is refused,
// in words a user can act on.
func Normalize(name string, val any) (any, error) {
	switch name {
	case PropSetpoint:
		f, ok := toFloat(val)
		if !ok {
			return nil, fmt.Errorf("%s must be a number, got %s", name, describe(val))
		}
		if math.IsNaN(f) || f < MinSetpoint || f > MaxSetpoint {
			// val, not f: a JSON number beyond float64 (1e400) is +Inf in f.
			return nil, fmt.Errorf("%s %v out of range %.1f to %.1f", name, val, MinSetpoint, MaxSetpoint)
		}
		return RoundSetpoint(f), nil
	case PropMode:
		s, ok := val.(string)
		if !ok {
			return nil, fmt.Errorf("%s must be a string, got %s", name, describe(val))
		}
		if !slices.Contains(Modes, s) {
			return nil, fmt.Errorf("%s %q is not one of off, heat, cool, auto", name, s)
		}
		return s, nil
	case PropPreset:
		return normalizePreset(val)
	case PropPresets:
		return normalizePresets(val)
	case PropSchedule:
		return normalizeSchedule(val)
	}
	return nil, fmt.Errorf("unknown property %q", name)
}

// RoundSetpoint rounds a temperature to the protocol's 0.1 °C resolution.
func RoundSetpoint(f float64) float64 { return math.Round(f*10) / 10 }

func toFloat(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case float32:
		return float64(n), true
	case int:
		return float64(n), true
	case int64:
		return float64(n), true
	case json.Number:
		// A number too large for a float64 (1e400) is still a number: it
		// parses as ±Inf with ErrRange, and is then out of range, not of
		// the wrong type.
		f, err := strconv.ParseFloat(string(n), 64)
		return f, err == nil || errors.Is(err, strconv.ErrRange)
	}
	return 0, false
}

func describe(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case string:
		return "a string"
	case bool:
		return "a boolean"
	case []any:
		return "an array"
	case map[string]any:
		return "an object"
	case json.Number, float64, float32, int, int64:
		return "a number"
	}
	return fmt.Sprintf("%T", v)
}

// Prop is one property value with its write stamp: the clock of the write
// that produced it.
type Prop struct {
	Val any   `json:"val"`
	W   Clock `json:"w"`
}

// Props maps property names to values. Messages carry every property the
// sender knows.
type Props map[string]Prop

// UnmarshalJSON decodes properties as they are written to stores and
// shown by the API, putting every known property's value in canonical
// form, so a value read back equals the one written. An invalid value of
// a known property is an error; unknown properties keep their JSON value.
func (p *Props) UnmarshalJSON(b []byte) error {
	var raw map[string]struct {
		Val json.RawMessage `json:"val"`
		W   Clock           `json:"w"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	if raw == nil {
		*p = nil
		return nil
	}
	out := make(Props, len(raw))
	for name, r := range raw {
		v, err := decodeValue(r.Val)
		if err != nil {
			return fmt.Errorf("property %s: %w", name, err)
		}
		if Known(name) {
			var err error
			if v, err = Normalize(name, v); err != nil {
				return fmt.Errorf("property %s: %w", name, err)
			}
		}
		out[name] = Prop{Val: v, W: r.W}
	}
	*p = out
	return nil
}

// Clone returns a copy that shares nothing mutable with p: values of the
// object properties (Presets, Schedule) are never changed once made.
func (p Props) Clone() Props {
	c := make(Props, len(p))
	for k, v := range p {
		c[k] = v
	}
	return c
}

// Values returns the property values without their stamps.
func (p Props) Values() map[string]any {
	out := make(map[string]any, len(p))
	for name, v := range p {
		out[name] = v.Val
	}
	return out
}

// Setpoint returns setpoint_c and whether it is set.
func (p Props) Setpoint() (float64, bool) {
	f, ok := p[PropSetpoint].Val.(float64)
	return f, ok
}

// Mode returns mode and whether it is set.
func (p Props) Mode() (string, bool) {
	s, ok := p[PropMode].Val.(string)
	return s, ok
}

// Preset returns preset and whether it is set.
func (p Props) Preset() (string, bool) {
	s, ok := p[PropPreset].Val.(string)
	return s, ok
}

// PresetsIn returns the presets among property values (what
// Props.Values or a device's Effective gives), DefaultPresets when the
// presets were never written: the one place that default applies.
func PresetsIn(values map[string]any) Presets {
	if ps, ok := values[PropPresets].(Presets); ok {
		return ps
	}
	return DefaultPresets
}

// Schedule returns schedule and whether it is set.
func (p Props) Schedule() (Schedule, bool) {
	s, ok := p[PropSchedule].Val.(Schedule)
	return s, ok
}
