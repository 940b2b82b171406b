package protocol

import (
	"fmt"
	"maps"
)

// ExpandWrite applies PROTOCOL.md's rules that keep presets and the
// setpoint in agreement to a local write (a user's, a button's, the
// schedule's), given the values in force: it returns the changes to stamp
// together, validated and normalized.
//
//   - preset NAME writes setpoint_c to that preset's temperature with it;
//   - setpoint_c by itself writes preset "none" with it;
//   - a presets write that changes the temperature of the preset in force
//     writes setpoint_c with it, and one that removes the preset in force
//     writes preset "none" (the contract is silent there; the setpoint
//     stays where it is, as when the schedule is disabled).
//
// A write naming a preset that the presets (written with it, or in force)
// do not define, or whose setpoint_c disagrees with the preset it sets, is
// refused. Receivers never call this: no side derives writes from the
// other side's.
func ExpandWrite(current, changes map[string]any) (map[string]any, error) {
	norm, err := normalizeAll(changes)
	if err != nil {
		return nil, err
	}
	out := maps.Clone(norm)
	presets := PresetsIn(current)
	newPresets, presetsWritten := norm[PropPresets].(Presets)
	if presetsWritten {
		presets = newPresets
	}
	preset, presetWritten := norm[PropPreset].(string)
	sp, setpointWritten := norm[PropSetpoint].(float64)
	switch {
	case presetWritten && preset != PresetNone:
		t, ok := presets[preset]
		if !ok {
			return nil, fmt.Errorf("preset %q is not defined (presets: %v)", preset, presets.Names())
		}
		if setpointWritten && sp != t {
			return nil, fmt.Errorf("setpoint_c %.1f disagrees with preset %q (%.1f): give one of them", sp, preset, t)
		}
		out[PropSetpoint] = t
	case setpointWritten && !presetWritten:
		out[PropPreset] = PresetNone
	case presetsWritten && !presetWritten:
		inForce, _ := current[PropPreset].(string)
		if inForce == "" || inForce == PresetNone {
			break
		}
		t, ok := presets[inForce]
		switch {
		case !ok:
			out[PropPreset] = PresetNone
		case current[PropSetpoint] != t:
			out[PropSetpoint] = t
		}
	}
	return out, nil
}
