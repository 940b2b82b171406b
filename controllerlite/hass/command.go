package hass

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

// maxCommand bounds a command payload: the longest valid one is a preset
// name of 16 characters.
const maxCommand = 64

// ErrBadCommand is wrapped by every refusal of a command from Home
// Assistant: it is logged and ignored, and the state re-published.
var ErrBadCommand = errors.New("bad command")

// parseCommandTopic returns the device id and attribute of a command
// topic <root>/<id>/<attr>/set.
func (t Topics) parseCommandTopic(topic string) (id, attr string, err error) {
	rest, ok := strings.CutPrefix(topic, t.Root+"/")
	if !ok {
		return "", "", fmt.Errorf("%w: topic %q is not under %q", ErrBadCommand, topic, t.Root)
	}
	rest, ok = strings.CutSuffix(rest, "/set")
	if !ok {
		return "", "", fmt.Errorf("%w: topic %q is not a command topic", ErrBadCommand, topic)
	}
	id, attr, ok = strings.Cut(rest, "/")
	if !ok || protocol.CheckDeviceID(id) != nil {
		return "", "", fmt.Errorf("%w: topic %q names no device", ErrBadCommand, topic)
	}
	return id, attr, nil
}

// commandChanges turns a command from Home Assistant into the changes of
// a controller write to d, as the API takes them. It refuses anything the
// discovery document did not offer: a mode not in the list, a temperature
// that is not a number from 5 to 35, a preset the device does not have
// ("none" is Home Assistant's no-preset, and protocol's).
func commandChanges(d fleet.Device, attr string, payload []byte) (map[string]any, error) {
	if len(payload) > maxCommand {
		return nil, fmt.Errorf("%w: %s payload of %d bytes", ErrBadCommand, attr, len(payload))
	}
	v := strings.TrimSpace(string(payload))
	switch attr {
	case attrMode:
		if !slices.Contains(protocol.Modes, v) {
			return nil, fmt.Errorf("%w: mode %q is not one of %s", ErrBadCommand, v, strings.Join(protocol.Modes, ", "))
		}
		return map[string]any{protocol.PropMode: v}, nil
	case attrTarget:
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || math.IsNaN(f) || f < protocol.MinSetpoint || f > protocol.MaxSetpoint {
			return nil, fmt.Errorf("%w: temperature %q is not a number from %v to %v", ErrBadCommand, v, protocol.MinSetpoint, protocol.MaxSetpoint)
		}
		return map[string]any{protocol.PropSetpoint: protocol.RoundSetpoint(f)}, nil
	case attrPreset:
		if v != protocol.PresetNone && !slices.Contains(presetModes(d), v) {
			return nil, fmt.Errorf("%w: preset %q is not one of %s's presets (%s) or none", ErrBadCommand, v, d.ID, strings.Join(presetModes(d), ", "))
		}
		return map[string]any{protocol.PropPreset: v}, nil
	}
	return nil, fmt.Errorf("%w: %q cannot be set", ErrBadCommand, attr)
}
