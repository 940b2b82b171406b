package protocol

import (
	"reflect"
	"strings"
	"testing"
)

func TestExpandWrite(t *testing.T) {
	custom := Presets{"home": 20.5, "away": 15}
	for _, tc := range []struct {
		name    string
		current map[string]any
		changes map[string]any
		want    map[string]any
		err     string
	}{
		{"preset sets its temperature", nil,
			map[string]any{PropPreset: "away"}, map[string]any{PropPreset: "away", PropSetpoint: 16.0}, ""},
		{"preset from the presets in force", map[string]any{PropPresets: custom},
			map[string]any{PropPreset: "home"}, map[string]any{PropPreset: "home", PropSetpoint: 20.5}, ""},
		{"undefined preset", map[string]any{PropPresets: custom},
			map[string]any{PropPreset: "eco"}, nil, `preset "eco" is not defined`},
		{"preset and its own temperature", nil,
			map[string]any{PropPreset: "eco", PropSetpoint: 18.0}, map[string]any{PropPreset: "eco", PropSetpoint: 18.0}, ""},
		{"preset and another temperature", nil,
			map[string]any{PropPreset: "eco", PropSetpoint: 19.0}, nil, "disagrees"},
		{"setpoint alone clears the preset", map[string]any{PropPreset: "away"},
			map[string]any{PropSetpoint: 22.04}, map[string]any{PropPreset: PresetNone, PropSetpoint: 22.0}, ""},
		{"mode alone touches neither", map[string]any{PropPreset: "away"},
			map[string]any{PropMode: ModeCool}, map[string]any{PropMode: ModeCool}, ""},
		{"presets and a preset in one write", nil,
			map[string]any{PropPresets: map[string]any{"night": 17.0}, PropPreset: "night"},
			map[string]any{PropPresets: Presets{"night": 17}, PropPreset: "night", PropSetpoint: 17.0}, ""},
		{"presets change the one in force", map[string]any{PropPreset: "home", PropSetpoint: 21.0},
			map[string]any{PropPresets: map[string]any{"home": 22.0, "away": 16.0}},
			map[string]any{PropPresets: Presets{"home": 22, "away": 16}, PropSetpoint: 22.0}, ""},
		{"presets keep the one in force", map[string]any{PropPreset: "home", PropSetpoint: 21.0},
			map[string]any{PropPresets: map[string]any{"home": 21.0, "away": 14.0}},
			map[string]any{PropPresets: Presets{"home": 21, "away": 14}}, ""},
		{"presets drop the one in force", map[string]any{PropPreset: "home", PropSetpoint: 21.0},
			map[string]any{PropPresets: map[string]any{"away": 14.0}},
			map[string]any{PropPresets: Presets{"away": 14}, PropPreset: PresetNone}, ""},
		{"presets with no preset in force", map[string]any{PropPreset: PresetNone, PropSetpoint: 21.0},
			map[string]any{PropPresets: map[string]any{"away": 14.0}},
			map[string]any{PropPresets: Presets{"away": 14}}, ""},
		{"invalid value", nil, map[string]any{PropPreset: "Away"}, nil, "must match"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ExpandWrite(tc.current, tc.changes)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || !reflect.DeepEqual(got, tc.want) {
				t.Fatalf("got %v %v, want %v", got, err, tc.want)
			}
		})
	}
}
