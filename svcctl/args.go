package svcctl

import (
	"fmt"
	"path/filepath"
	"slices"
	"strings"
)

// recordedArgs returns the arguments ExecStart runs the binary with: the
// run command, the spec's default flags that flags does not set, then
// flags with path values made absolute. It also returns warnings about
// values the unit's sandbox will not let the service write.
func recordedArgs(spec Spec, flags []string) (args, warnings []string, err error) {
	given := map[string]bool{}
	var out []string
	for i := 0; i < len(flags); i++ {
		a := flags[i]
		if a == "--" {
			out = append(out, flags[i:]...)
			break
		}
		name, value, hasValue, isFlag := splitFlag(a)
		if !isFlag {
			out = append(out, a)
			continue
		}
		given[name] = true
		if !slices.Contains(spec.PathFlags, name) {
			out = append(out, a)
			continue
		}
		if !hasValue {
			if i+1 >= len(flags) {
				return nil, nil, fmt.Errorf("flag --%s needs a value", name)
			}
			i++
			value = flags[i]
		}
		if value == "" {
			return nil, nil, fmt.Errorf("flag --%s: empty path", name)
		}
		abs, err := filepath.Abs(value)
		if err != nil {
			return nil, nil, fmt.Errorf("flag --%s: %w", name, err)
		}
		if dir, ok := spec.Writable[name]; ok && abs != dir && !strings.HasPrefix(abs, dir+"/") {
			warnings = append(warnings, fmt.Sprintf("--%s %s is outside %s, the only place the service may write (ProtectSystem=strict); change the unit with `systemctl edit %s` if you mean it",
				name, abs, dir, spec.Name))
		}
		out = append(out, "--"+name, abs)
	}
	args = []string{spec.RunCommand}
	for _, d := range spec.Defaults {
		if !given[d.Name] {
			args = append(args, "--"+d.Name, d.Value)
		}
	}
	return append(args, out...), warnings, nil
}

// splitFlag splits "-name", "--name" or "--name=value" as the flag package
// reads them.
func splitFlag(a string) (name, value string, hasValue, isFlag bool) {
	if len(a) < 2 || a[0] != '-' {
		return "", "", false, false
	}
	name = strings.TrimPrefix(strings.TrimPrefix(a, "-"), "-")
	if name == "" || name[0] == '-' || name[0] == '=' {
		return "", "", false, false
	}
	name, value, hasValue = strings.Cut(name, "=")
	return name, value, hasValue, true
}

// execLine is the ExecStart= value for exe and args, escaped for systemd.
// The executable is escaped as kardianos' cmdEscape does, so the unit it
// renders and our drop-ins compare equal.
func execLine(exe string, args []string) string {
	return strings.Join(append([]string{strings.ReplaceAll(exe, " ", `\x20`)}, escapeWords(args)...), " ")
}

// escapeWords quotes each argument for systemd's command-line parser:
// whitespace and quotes need quoting, and %-specifiers and $-variables
// would otherwise be expanded.
func escapeWords(args []string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		out[i] = escapeWord(a)
	}
	return out
}

func escapeWord(a string) string {
	bare := a != ""
	for _, r := range a {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_./:=@+,-", r)) {
			bare = false
			break
		}
	}
	if bare {
		return a
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "%", "%%", "$", "$$", "\n", `\n`, "\t", `\t`)
	return `"` + r.Replace(a) + `"`
}

// unitExecStart returns the value of the unit's ExecStart= line.
func unitExecStart(unit string) string {
	for _, l := range strings.Split(unit, "\n") {
		if v, ok := strings.CutPrefix(l, "ExecStart="); ok {
			return strings.TrimSpace(v)
		}
	}
	return ""
}
