// Package schedfile reads a week program from a file a person wrote, in
// YAML or JSON (JSON is YAML), for `thermostat set --schedule` and
// `controllerlite set --schedule`: the schedule property's own rules
// (protocol.DecodeSchedule), with the line of the file a problem is on.
//
//	enabled: true
//	tz: Europe/Berlin
//	week:
//	  mon:
//	    - {at: "06:30", setpoint_c: 21}
//	    - {at: "22:00", preset: sleep}
package schedfile

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/thermofleet/thermo/protocol"
)

// Load reads and validates the schedule in path.
func Load(path string) (protocol.Schedule, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return protocol.Schedule{}, fmt.Errorf("schedule file: %w", err)
	}
	s, err := Parse(b)
	if err != nil {
		return protocol.Schedule{}, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Parse reads and validates a schedule written in YAML or JSON. An error
// names the line of the first problem.
func Parse(b []byte) (protocol.Schedule, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return protocol.Schedule{}, err
	}
	if len(doc.Content) == 0 {
		return protocol.Schedule{}, errors.New("empty: a schedule has enabled, tz (optional) and week")
	}
	return FromNode(doc.Content[0])
}

// FromNode reads a schedule from a YAML node of a larger document (the
// schedule: key of the thermostat's configuration); errors name the
// document's lines.
func FromNode(n *yaml.Node) (protocol.Schedule, error) {
	lines := map[string]int{}
	v, err := value(n, "", lines)
	if err != nil {
		return protocol.Schedule{}, err
	}
	j, err := json.Marshal(v)
	if err != nil {
		return protocol.Schedule{}, err
	}
	s, err := protocol.DecodeSchedule(j)
	if err != nil {
		return protocol.Schedule{}, withLine(err, lines)
	}
	return s, nil
}

// value turns a YAML node into what JSON would decode, recording the line
// of every path ("week.mon[1].at").
func value(n *yaml.Node, path string, lines map[string]int) (any, error) {
	lines[path] = n.Line
	switch n.Kind {
	case yaml.AliasNode:
		return value(n.Alias, path, lines)
	case yaml.MappingNode:
		m := map[string]any{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			val, err := value(v, p, lines)
			if err != nil {
				return nil, err
			}
			m[k.Value] = val
		}
		return m, nil
	case yaml.SequenceNode:
		out := []any{}
		for i, c := range n.Content {
			val, err := value(c, fmt.Sprintf("%s[%d]", path, i), lines)
			if err != nil {
				return nil, err
			}
			out = append(out, val)
		}
		return out, nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!int", "!!float":
			f, err := strconv.ParseFloat(n.Value, 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", n.Line, path, err)
			}
			return f, nil
		case "!!bool":
			var b bool
			if err := n.Decode(&b); err != nil {
				return nil, fmt.Errorf("line %d: %s: %w", n.Line, path, err)
			}
			return b, nil
		case "!!null":
			return nil, nil
		}
		return n.Value, nil
	}
	return nil, fmt.Errorf("line %d: %s: unexpected YAML", n.Line, path)
}

var pathInError = regexp.MustCompile(`week\.[a-z]+(\[\d+\])?`)

// withLine prefixes err with the line of the deepest path it names.
func withLine(err error, lines map[string]int) error {
	msg := err.Error()
	if p := pathInError.FindString(msg); p != "" {
		if l, ok := lines[p]; ok {
			return fmt.Errorf("line %d: %w", l, err)
		}
	}
	for _, key := range []string{"tz", "enabled", "week"} {
		if strings.Contains(msg, key) {
			if l, ok := lines[key]; ok {
				return fmt.Errorf("line %d: %w", l, err)
			}
		}
	}
	return err
}
