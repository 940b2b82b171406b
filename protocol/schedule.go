package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"
)

// Property names added to version 1 (PROTOCOL.md "Properties"). Each is a
// register like setpoint_c and mode: its whole value carries one stamp.
const (
	PropPreset   = "preset"
	PropPresets  = "presets"
	PropSchedule = "schedule"
)

// PresetNone is the preset of a setpoint set by itself.
const PresetNone = "none"

// MaxPresets and MaxEntriesPerDay bound the presets and schedule values.
const (
	MaxPresets       = 8
	MaxEntriesPerDay = 8
)

// DefaultPresets are the presets of a device that never received a
// presets write.
var DefaultPresets = Presets{"home": 21, "away": 16, "eco": 18, "sleep": 18, "comfort": 22}

// Weekdays are the keys of a schedule's week, Monday first.
var Weekdays = []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

var presetNameRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,15}$`)

// CheckPresetName reports whether name may name a preset.
func CheckPresetName(name string) error {
	if !presetNameRE.MatchString(name) || name == PresetNone {
		return fmt.Errorf("preset name %q must match %s and not be %q", name, presetNameRE, PresetNone)
	}
	return nil
}

// Presets maps preset names to setpoints in °C. A value of this type is
// never changed once made: writes replace it whole.
type Presets map[string]float64

// Names returns the preset names, sorted.
func (p Presets) Names() []string { return slices.Sorted(maps.Keys(p)) }

// Schedule is the week program that runs on the device. A value of this
// type is never changed once made: writes replace it whole.
type Schedule struct {
	Enabled bool `json:"enabled"`
	// TZ is an IANA zone name; empty for the board's own zone.
	TZ string `json:"tz,omitempty"`
	// Week maps mon..sun to the day's entries in strictly ascending time;
	// a missing day has none.
	Week map[string][]Entry `json:"week"`
}

// Entry is one point of a schedule: at a wall-clock time, a setpoint or a
// preset.
type Entry struct {
	At string `json:"at"` // "HH:MM", 24 h
	// Exactly one of SetpointC and Preset.
	SetpointC *float64 `json:"setpoint_c,omitempty"`
	Preset    string   `json:"preset,omitempty"`
}

// Minute returns the entry's time as minutes after midnight.
func (e Entry) Minute() int {
	m, _ := parseHHMM(e.At)
	return m
}

// Target describes what the entry sets, for logs and displays.
func (e Entry) Target() string {
	if e.SetpointC != nil {
		return fmt.Sprintf("%.1f °C", *e.SetpointC)
	}
	return "preset " + e.Preset
}

// Location loads the schedule's zone: the named IANA zone, or local for
// an empty TZ.
func (s Schedule) Location(local *time.Location) (*time.Location, error) {
	if s.TZ == "" {
		return local, nil
	}
	loc, err := time.LoadLocation(s.TZ)
	if err != nil {
		return nil, fmt.Errorf("schedule tz %q: %w", s.TZ, err)
	}
	return loc, nil
}

// Presets used by the schedule's entries, sorted, so a presets write can
// be checked against the schedule in force.
func (s Schedule) PresetsUsed() []string {
	var out []string
	for _, day := range s.Week {
		for _, e := range day {
			if e.Preset != "" && !slices.Contains(out, e.Preset) {
				out = append(out, e.Preset)
			}
		}
	}
	slices.Sort(out)
	return out
}

func parseHHMM(s string) (int, error) {
	if len(s) != 5 || s[2] != ':' {
		return 0, fmt.Errorf("at %q is not HH:MM", s)
	}
	var h, m int
	for i, c := range []byte(s) {
		if i == 2 {
			continue
		}
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("at %q is not HH:MM", s)
		}
	}
	h = int(s[0]-'0')*10 + int(s[1]-'0')
	m = int(s[3]-'0')*10 + int(s[4]-'0')
	if h > 23 || m > 59 {
		return 0, fmt.Errorf("at %q is not a time of day (00:00 to 23:59)", s)
	}
	return h*60 + m, nil
}

// normalizePreset checks a preset value: "none" or a preset name. Whether
// the name is defined in presets is a rule between properties, checked
// where both are known (see CheckPresetIn).
func normalizePreset(val any) (any, error) {
	s, ok := val.(string)
	if !ok {
		return nil, fmt.Errorf("%s must be a string, got %s", PropPreset, describe(val))
	}
	if s != PresetNone {
		if err := CheckPresetName(s); err != nil {
			return nil, fmt.Errorf("%s: %w", PropPreset, err)
		}
	}
	return s, nil
}

func normalizePresets(val any) (any, error) {
	var raw map[string]any
	switch v := val.(type) {
	case Presets:
		raw = make(map[string]any, len(v))
		for k, f := range v {
			raw[k] = f
		}
	case map[string]float64:
		raw = make(map[string]any, len(v))
		for k, f := range v {
			raw[k] = f
		}
	case map[string]any:
		raw = v
	default:
		return nil, fmt.Errorf("%s must be an object of names to setpoints, got %s", PropPresets, describe(val))
	}
	if len(raw) < 1 || len(raw) > MaxPresets {
		return nil, fmt.Errorf("%s has %d entries, want 1 to %d", PropPresets, len(raw), MaxPresets)
	}
	out := make(Presets, len(raw))
	for _, name := range slices.Sorted(maps.Keys(raw)) {
		if err := CheckPresetName(name); err != nil {
			return nil, fmt.Errorf("%s: %w", PropPresets, err)
		}
		f, err := setpointValue(raw[name])
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", PropPresets, name, err)
		}
		out[name] = f
	}
	return out, nil
}

// setpointValue validates a temperature as setpoint_c is validated.
func setpointValue(val any) (float64, error) {
	v, err := Normalize(PropSetpoint, val)
	if err != nil {
		return 0, errors.New(strings.TrimPrefix(err.Error(), PropSetpoint+" "))
	}
	return v.(float64), nil
}

func normalizeSchedule(val any) (any, error) {
	var s Schedule
	switch v := val.(type) {
	case Schedule:
		s = v
	case *Schedule:
		if v == nil {
			return nil, fmt.Errorf("%s must be an object, got null", PropSchedule)
		}
		s = *v
	case map[string]any:
		// A decoded JSON object: re-encode and decode strictly, so an
		// unknown key or a wrong type is named.
		b, err := json.Marshal(v)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", PropSchedule, err)
		}
		if s, err = DecodeSchedule(b); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("%s must be an object, got %s", PropSchedule, describe(val))
	}
	return s.normalized()
}

// DecodeSchedule parses a schedule from JSON, refusing unknown keys, and
// validates it.
func DecodeSchedule(b []byte) (Schedule, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var raw struct {
		Enabled *bool                        `json:"enabled"`
		TZ      *string                      `json:"tz"`
		Week    map[string][]json.RawMessage `json:"week"`
	}
	if err := dec.Decode(&raw); err != nil {
		return Schedule{}, fmt.Errorf("%s: %w", PropSchedule, err)
	}
	if raw.Enabled == nil {
		return Schedule{}, fmt.Errorf("%s: no enabled (true or false)", PropSchedule)
	}
	s := Schedule{Enabled: *raw.Enabled, Week: map[string][]Entry{}}
	if raw.TZ != nil {
		if *raw.TZ == "" {
			return Schedule{}, fmt.Errorf("%s: tz is empty; leave it out for the board's own zone", PropSchedule)
		}
		s.TZ = *raw.TZ
	}
	for day, entries := range raw.Week {
		if !slices.Contains(Weekdays, day) {
			return Schedule{}, fmt.Errorf("%s: week has day %q, want mon, tue, wed, thu, fri, sat or sun", PropSchedule, day)
		}
		for i, re := range entries {
			e, err := decodeEntry(re)
			if err != nil {
				return Schedule{}, fmt.Errorf("%s: week.%s[%d]: %w", PropSchedule, day, i, err)
			}
			s.Week[day] = append(s.Week[day], e)
		}
	}
	return s.normalized()
}

func decodeEntry(b json.RawMessage) (Entry, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	dec.UseNumber()
	var raw struct {
		At        *string `json:"at"`
		SetpointC any     `json:"setpoint_c"`
		Preset    *string `json:"preset"`
	}
	if err := dec.Decode(&raw); err != nil {
		return Entry{}, err
	}
	if raw.At == nil {
		return Entry{}, errors.New("no at")
	}
	e := Entry{At: *raw.At}
	if raw.SetpointC != nil {
		f, err := setpointValue(raw.SetpointC)
		if err != nil {
			return Entry{}, fmt.Errorf("setpoint_c: %w", err)
		}
		e.SetpointC = &f
	}
	if raw.Preset != nil {
		e.Preset = *raw.Preset
		if e.Preset == "" {
			return Entry{}, errors.New("preset is empty")
		}
	}
	return e, nil
}

// normalized checks every rule of a schedule value and returns it in
// canonical form (setpoints rounded, empty days left out).
func (s Schedule) normalized() (Schedule, error) {
	if s.TZ != "" {
		if _, err := time.LoadLocation(s.TZ); err != nil {
			return Schedule{}, fmt.Errorf("%s: tz %q is not a known IANA zone", PropSchedule, s.TZ)
		}
	}
	out := Schedule{Enabled: s.Enabled, TZ: s.TZ, Week: map[string][]Entry{}}
	for day, entries := range s.Week {
		if !slices.Contains(Weekdays, day) {
			return Schedule{}, fmt.Errorf("%s: week has day %q, want mon, tue, wed, thu, fri, sat or sun", PropSchedule, day)
		}
		if len(entries) > MaxEntriesPerDay {
			return Schedule{}, fmt.Errorf("%s: week.%s has %d entries, at most %d", PropSchedule, day, len(entries), MaxEntriesPerDay)
		}
		prev := -1
		for i, e := range entries {
			m, err := parseHHMM(e.At)
			if err != nil {
				return Schedule{}, fmt.Errorf("%s: week.%s[%d]: %w", PropSchedule, day, i, err)
			}
			if m <= prev {
				return Schedule{}, fmt.Errorf("%s: week.%s[%d]: at %s is not after the entry before it (entries in strictly ascending time)", PropSchedule, day, i, e.At)
			}
			prev = m
			switch {
			case (e.SetpointC == nil) == (e.Preset == ""):
				return Schedule{}, fmt.Errorf("%s: week.%s[%d] (%s): exactly one of setpoint_c and preset", PropSchedule, day, i, e.At)
			case e.SetpointC != nil:
				f, err := setpointValue(*e.SetpointC)
				if err != nil {
					return Schedule{}, fmt.Errorf("%s: week.%s[%d] (%s): setpoint_c %w", PropSchedule, day, i, e.At, err)
				}
				e.SetpointC = &f
			default:
				if err := CheckPresetName(e.Preset); err != nil {
					return Schedule{}, fmt.Errorf("%s: week.%s[%d] (%s): %w", PropSchedule, day, i, e.At, err)
				}
			}
			out.Week[day] = append(out.Week[day], e)
		}
	}
	return out, nil
}
