// Package cli is what the command lines of thermostat, controllerlite and
// mttr share, so they behave alike: flags anywhere among the arguments,
// -h on every command printing its usage and succeeding, mistakes in the
// command line exiting 2 and every other failure 1, and one version line.
package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime"
	"strings"
)

// ErrUsage marks a mistake in the command line itself (an unknown command
// or flag, a missing argument): exit status 2.
var ErrUsage = errors.New("usage")

// Usagef returns an error wrapping ErrUsage.
func Usagef(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUsage, fmt.Sprintf(format, args...))
}

// IsHelp reports whether arg asks for help.
func IsHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// NewFlags makes a command's flag set: errors are returned, not fatal, and
// its usage ("Usage: SYNOPSIS" and the flags) goes to stderr.
func NewFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// Parse parses flags placed anywhere among the positional arguments ("set
// d1 --setpoint 21" as well as "set --setpoint 21 d1"); everything after
// "--" is positional. -h returns flag.ErrHelp after printing the usage; a
// bad flag returns an error wrapping ErrUsage.
func Parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, fmt.Errorf("%w: %w", ErrUsage, err)
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(pos, rest...), nil
		}
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// ParseN parses and requires exactly the positional arguments named by
// names (none for a command that takes only flags).
func ParseN(fs *flag.FlagSet, args []string, names ...string) ([]string, error) {
	pos, err := Parse(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) != len(names) {
		fs.Usage()
		if len(pos) < len(names) {
			return nil, Usagef("%s: missing %s", fs.Name(), names[len(pos)])
		}
		return nil, Usagef("%s: unexpected argument %q", fs.Name(), pos[len(names)])
	}
	return pos, nil
}

// HelpOK turns the -h "error" into success: the usage was printed.
func HelpOK(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	return err
}

// ExitCode prints err as "PROG: err" on stderr and returns the process's
// exit status: 0 for no error or -h, 2 for a usage error, 1 otherwise.
func ExitCode(prog string, err error, stderr io.Writer) int {
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, ErrUsage):
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 2
	}
	fmt.Fprintf(stderr, "%s: %v\n", prog, err)
	return 1
}

// Version is the one-line version of every binary: name, version, commit,
// build date, platform and Go version.
func Version(prog, version, commit, date string) string {
	return fmt.Sprintf("%s %s (commit %s, built %s, %s/%s, %s)",
		prog, version, commit, date, runtime.GOOS, runtime.GOARCH, runtime.Version())
}

// StringList is a repeatable flag; each value may also be comma-separated.
type StringList []string

func (l *StringList) String() string { return strings.Join(*l, ",") }

// Set adds the comma-separated values of one flag.
func (l *StringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}
