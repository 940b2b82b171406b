// Package yamlconf helps the hardware and control configuration types point
// at the YAML line a problem is on.
//
// A hobbyist who wrote `pin: GPIO71` wants "line 14: hardware.relays.heat.pin:
// no GPIO pin named GPIO71", not a stack of Go types. Config types decode
// through yaml.Node, keep an index of path to line with Index, refuse
// unknown keys with CheckKnown, and report problems with Lines.Errorf.
package yamlconf

import (
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Error is a configuration problem at a place in the YAML file.
type Error struct {
	Line   int    // 1-based; 0 when the value did not come from a file (a default)
	Path   string // dotted path such as "hardware.relays.heat.pin"
	Reason string
}

func (e *Error) Error() string {
	if e.Line > 0 {
		return fmt.Sprintf("line %d: %s: %s", e.Line, e.Path, e.Reason)
	}
	return fmt.Sprintf("%s: %s", e.Path, e.Reason)
}

// Lines maps a dotted path ("sensors[1].type") below a section to the line
// of its value. The zero value (nil) is usable and knows no lines.
type Lines struct {
	Section string // prefix of every path in errors: "hardware", "control"
	m       map[string]int
}

// Index records the line of every key and value under n.
func Index(section string, n *yaml.Node) Lines {
	l := Lines{Section: section, m: map[string]int{}}
	l.walk("", n)
	return l
}

func (l *Lines) walk(path string, n *yaml.Node) {
	if n == nil {
		return
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		l.walk(path, n.Content[0])
		return
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	l.m[path] = n.Line
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			l.walk(p, v)
			if v.Line == 0 || (v.Kind != yaml.ScalarNode && v.Kind != yaml.AliasNode) {
				// A block mapping or sequence starts on the line after its key;
				// the key's line is what a person looks for.
				l.m[p] = k.Line
			}
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.walk(path+"["+strconv.Itoa(i)+"]", c)
		}
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Line returns the line of path, or of its nearest ancestor the file has,
// or 0.
func (l Lines) Line(path string) int {
	for p := path; ; {
		if n, ok := l.m[p]; ok && n > 0 {
			return n
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			if n, ok := l.m[""]; ok {
				return n
			}
			return 0
		}
		p = p[:i]
	}
}

// Errorf returns an *Error for path (relative to the section).
func (l Lines) Errorf(path, format string, args ...any) error {
	full := l.Section
	if path != "" {
		if full != "" && !strings.HasPrefix(path, "[") {
			full += "."
		}
		full += path
	}
	return &Error{Line: l.Line(path), Path: full, Reason: fmt.Sprintf(format, args...)}
}

// CheckKnown walks n alongside the Go type of v (a pointer to a struct
// decoded from n) and refuses the first mapping key that has no field:
// a misspelt "min_of" must not silently mean "use the default".
func CheckKnown(section string, n *yaml.Node, v any) error {
	l := Lines{Section: section}
	return l.checkKnown("", n, reflect.TypeOf(v))
}

var durationType = reflect.TypeOf(time.Duration(0))

func (l Lines) checkKnown(path string, n *yaml.Node, t reflect.Type) error {
	if n == nil {
		return nil
	}
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	if n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == durationType {
		return nil
	}
	// Types with their own UnmarshalYAML check themselves.
	if reflect.PointerTo(t).Implements(unmarshalerType) && path != "" {
		return nil
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return nil // the decoder reports the type mismatch
		}
		fields := map[string]reflect.Type{}
		var names []string
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if name == "-" {
				continue
			}
			if name == "" {
				name = strings.ToLower(f.Name)
			}
			fields[name] = f.Type
			names = append(names, name)
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			ft, ok := fields[k.Value]
			p := join(path, k.Value)
			if !ok {
				full := l.Section + "." + p
				return &Error{Line: k.Line, Path: full, Reason: fmt.Sprintf("unknown key %q (known: %s)", k.Value, strings.Join(names, ", "))}
			}
			if err := l.checkKnown(p, n.Content[i+1], ft); err != nil {
				return err
			}
		}
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			return nil
		}
		for i, c := range n.Content {
			if err := l.checkKnown(path+"["+strconv.Itoa(i)+"]", c, t.Elem()); err != nil {
				return err
			}
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return nil
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			if err := l.checkKnown(join(path, n.Content[i].Value), n.Content[i+1], t.Elem()); err != nil {
				return err
			}
		}
	}
	return nil
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// Exact returns the line of exactly path, and whether the file set it.
func (l Lines) Exact(path string) (int, bool) {
	n, ok := l.m[path]
	return n, ok
}
