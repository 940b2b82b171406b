// Package svcctl installs and controls thermostat and controllerlite as
// system services: `thermostat install|uninstall|start|stop|restart` (and
// `thermostat service status`) through github.com/kardianos/service, with
// our own systemd unit (package systemd) instead of the library's, and the
// flags given to install recorded in the unit's ExecStart.
//
// Only systemd is supported: the units rely on Type=notify, WatchdogSec=
// and the sandboxing options. Every command refuses with a clear message
// when not run as root (status excepted) or when systemd is not the
// service manager.
//
// Where the .deb already installed the unit in /lib/systemd/system,
// install does not write a second unit into /etc/systemd/system (it would
// hide the packaged one from upgrades): it enables the packaged unit and
// records different flags in a drop-in that overrides ExecStart only.
package svcctl

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"

	"github.com/kardianos/service"
	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/systemd"
)

// Spec describes one of our services.
type Spec struct {
	Name        string // unit name without .service; also the binary's name
	Description string
	// RunCommand is the subcommand the service runs: "run" or "serve".
	RunCommand string
	// Unit is the unit text as shipped, with the packaged ExecStart.
	Unit string
	// User is the account the service runs as; install creates it (a
	// system user with its own group) when it is missing.
	User string
	// Groups are the unit's SupplementaryGroups: install creates missing
	// ones, since systemd refuses to start a unit naming an unknown group.
	Groups []string
	// Defaults are flags recorded in ExecStart unless install was given
	// them: the ones that tie the service to the unit's directories.
	Defaults []Flag
	// PathFlags name flags whose value is a file or directory: install
	// records them as absolute paths (systemd starts the service in /).
	PathFlags []string
	// Writable maps flags to the directory the sandbox lets the service
	// write (ProtectSystem=strict): install warns about values outside it.
	Writable map[string]string
	// StatusVerb: whether a top-level "status" is the service status. The
	// thermostat's own `status` talks to the running agent, so it leaves
	// this false and offers `thermostat service status` instead.
	StatusVerb bool
}

// Flag is a flag name (without dashes) and its value.
type Flag struct{ Name, Value string }

// Thermostat is the firmware's service.
var Thermostat = Spec{
	Name:        "thermostat",
	Description: "Thermostat firmware (thermofleet)",
	RunCommand:  "run",
	Unit:        systemd.ThermostatUnit,
	User:        "thermostat",
	Groups:      []string{"gpio", "i2c"},
	Defaults: []Flag{
		{"config", "/etc/thermostat/config.yaml"},
		{"state-dir", "/var/lib/thermostat"},
		{"control-socket", "/run/thermostat/control.sock"},
	},
	PathFlags: []string{"config", "state-dir", "control-socket", "ca", "cert", "key"},
	Writable: map[string]string{
		"state-dir":      "/var/lib/thermostat",
		"control-socket": "/run/thermostat",
	},
}

// Controllerlite is the controller's service.
var Controllerlite = Spec{
	Name:        "controllerlite",
	Description: "Thermofleet controller (controllerlite)",
	RunCommand:  "serve",
	Unit:        systemd.ControllerliteUnit,
	User:        "controllerlite",
	Defaults: []Flag{
		{"ca", "/etc/controllerlite/ca.crt"},
		{"cert", "/etc/controllerlite/server.crt"},
		{"key", "/etc/controllerlite/server.key"},
		{"data-dir", "/var/lib/controllerlite"},
	},
	PathFlags:  []string{"ca", "cert", "key", "data-dir", "broker-data-dir", "http-token-file", "signing-key", "enroll-cert", "enroll-key"},
	Writable:   map[string]string{"data-dir": "/var/lib/controllerlite", "broker-data-dir": "/var/lib/controllerlite"},
	StatusVerb: true,
}

// Verbs are the service commands, as in `thermostat service VERB`.
var Verbs = []string{"install", "uninstall", "start", "stop", "restart", "status"}

const usage = `Usage: %[1]s install [flags of '%[1]s %[2]s']
       %[1]s uninstall|start|stop|restart
       %[1]s service install|uninstall|start|stop|restart|status

install makes %[1]s a systemd service that runs '%[1]s %[2]s' with the
flags given here, as user %[1]s (created if missing), and enables it;
start starts it. With the .deb installed, install enables the packaged
unit and records other flags in a drop-in. uninstall stops and disables
it and keeps the state and the configuration. All but status need root.
`

// ErrNotRoot and ErrNoSystemd are the refusals, for errors.Is.
var (
	ErrNotRoot   = errors.New("must be run as root")
	ErrNoSystemd = errors.New("systemd is not the service manager here")
)

// Handle runs a service command if args (os.Args[1:]) starts with one:
// `install [run flags]`, `uninstall`, `start`, `stop`, `restart`, `status`
// (status only when spec.StatusVerb), or any of them after "service"
// (`thermostat service status`). It returns handled=false for anything
// else, so main goes on with its own commands.
//
// check, when not nil, validates the flags given to install the way the
// run command parses them (main passes its own flag set's Parse), so a
// typo fails now instead of in a restart loop.
func Handle(spec Spec, args []string, check func(runArgs []string) error) (handled bool, err error) {
	return defaultHost.handle(spec, args, check)
}

// host is what Handle touches outside the process; tests replace parts.
type host struct {
	stdout     io.Writer
	euid       func() int
	platform   func() string
	executable func() (string, error)
	// packagedDirs are where a .deb puts units; etcDir is where install
	// writes drop-ins (kardianos writes its unit there itself).
	packagedDirs []string
	etcDir       string
}

var defaultHost = &host{
	stdout:       os.Stdout,
	euid:         os.Geteuid,
	platform:     service.Platform,
	executable:   os.Executable,
	packagedDirs: []string{"/lib/systemd/system", "/usr/lib/systemd/system"},
	etcDir:       "/etc/systemd/system",
}

func (h *host) handle(spec Spec, args []string, check func([]string) error) (bool, error) {
	if len(args) == 0 {
		return false, nil
	}
	verb, rest := args[0], args[1:]
	explicit := false
	if verb == "service" {
		switch {
		case len(rest) > 0 && cli.IsHelp(rest[0]):
			fmt.Fprintf(h.stdout, usage, spec.Name, spec.RunCommand)
			return true, nil
		case len(rest) == 0 || !slices.Contains(Verbs, rest[0]):
			return true, cli.Usagef("%s service %s", spec.Name, strings.Join(Verbs, "|"))
		}
		verb, rest, explicit = rest[0], rest[1:], true
	}
	if !slices.Contains(Verbs, verb) || (verb == "status" && !spec.StatusVerb && !explicit) {
		return false, nil
	}
	if slices.ContainsFunc(rest, func(a string) bool { return a == "-h" || a == "-help" || a == "--help" }) {
		fmt.Fprintf(h.stdout, usage, spec.Name, spec.RunCommand)
		return true, nil
	}
	if verb != "install" && len(rest) > 0 {
		return true, cli.Usagef("%s takes no arguments (got %q); flags belong to install", verb, rest)
	}
	if err := h.refuse(spec, verb); err != nil {
		return true, err
	}
	switch verb {
	case "install":
		return true, h.install(spec, rest, check)
	case "uninstall":
		return true, h.uninstall(spec)
	case "status":
		return true, h.status(spec)
	}
	svc, err := h.service(spec, nil, "")
	if err != nil {
		return true, err
	}
	action := map[string]func() error{"start": svc.Start, "stop": svc.Stop, "restart": svc.Restart}[verb]
	if err := action(); err != nil {
		return true, fmt.Errorf("%s: %w", verb, err)
	}
	fmt.Fprintf(h.stdout, "%s: %s done\n", spec.Name, verb)
	return true, nil
}

// refuse says why verb cannot run here, or nil.
func (h *host) refuse(spec Spec, verb string) error {
	if verb != "status" && h.euid() != 0 {
		return fmt.Errorf("%s: %w (try: sudo %s %s ...)", verb, ErrNotRoot, spec.Name, verb)
	}
	switch p := h.platform(); p {
	case "linux-systemd":
		return nil
	case "":
		return fmt.Errorf("%s: %w: no service manager found; run `%s %s` under your own supervisor",
			verb, ErrNoSystemd, spec.Name, spec.RunCommand)
	default:
		return fmt.Errorf("%s: %w (found %s); the unit needs systemd's watchdog and sandbox: run `%s %s` under your own supervisor",
			verb, ErrNoSystemd, p, spec.Name, spec.RunCommand)
	}
}

// program satisfies service.Interface; the service itself is `NAME run`,
// started by systemd, never through kardianos' Run.
type program struct{}

func (program) Start(service.Service) error { return nil }
func (program) Stop(service.Service) error  { return nil }

func (h *host) service(spec Spec, arguments []string, exe string) (service.Service, error) {
	tmpl, err := unitTemplate(spec.Unit)
	if err != nil {
		return nil, err
	}
	return service.New(program{}, &service.Config{
		Name:        spec.Name,
		Description: spec.Description,
		Executable:  exe,
		Arguments:   arguments,
		UserName:    spec.User,
		Option:      service.KeyValue{"SystemdScript": tmpl},
	})
}

// unitTemplate turns the shipped unit into a kardianos template: the
// ExecStart line becomes the executable and the recorded arguments, which
// are escaped for systemd already (see execLine). Nothing else in our unit
// is templated, and it must not contain template markers.
func unitTemplate(unit string) (string, error) {
	if strings.Contains(unit, "{{") || strings.Contains(unit, "}}") {
		return "", errors.New("unit text contains template markers")
	}
	lines := strings.Split(unit, "\n")
	n := 0
	for i, l := range lines {
		if strings.HasPrefix(l, "ExecStart=") {
			lines[i] = "ExecStart={{Path | cmdEscape}}{{range Arguments}} {{.}}{{end}}"
			n++
		}
	}
	if n != 1 {
		return "", fmt.Errorf("unit has %d ExecStart= lines, want 1", n)
	}
	return strings.Join(lines, "\n"), nil
}

// packagedUnit returns the path of the unit a package installed, or "".
func (h *host) packagedUnit(spec Spec) string {
	for _, d := range h.packagedDirs {
		p := filepath.Join(d, spec.Name+".service")
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

func (h *host) dropIn(spec Spec) string {
	return filepath.Join(h.etcDir, spec.Name+".service.d", "10-install-flags.conf")
}

func (h *host) install(spec Spec, flags []string, check func([]string) error) error {
	if check != nil {
		if err := check(flags); err != nil {
			return fmt.Errorf("install: flags for `%s %s`: %w", spec.Name, spec.RunCommand, err)
		}
	}
	args, warnings, err := recordedArgs(spec, flags)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	exe, err := h.executable()
	if err != nil {
		return fmt.Errorf("install: find own executable: %w", err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		return fmt.Errorf("install: find own executable: %w", err)
	}
	for _, w := range warnings {
		fmt.Fprintf(h.stdout, "warning: %s\n", w)
	}
	if err := ensureAccount(h.stdout, spec); err != nil {
		return fmt.Errorf("install: %w", err)
	}
	line := execLine(exe, args)

	if pkg := h.packagedUnit(spec); pkg != "" {
		return h.installPackaged(spec, pkg, line)
	}
	svc, err := h.service(spec, escapeWords(args), exe)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	if err := svc.Install(); err != nil {
		if strings.Contains(err.Error(), "already exists") {
			return fmt.Errorf("install: already installed (%s); run `%s uninstall` first: %w",
				filepath.Join(h.etcDir, spec.Name+".service"), spec.Name, err)
		}
		return fmt.Errorf("install: %w", err)
	}
	fmt.Fprintf(h.stdout, "installed and enabled %s.service:\n  ExecStart=%s\nstart it with: sudo %s start\n",
		spec.Name, line, spec.Name)
	return nil
}

// installPackaged enables the unit the package shipped and, when the
// flags differ from its ExecStart, records them in a drop-in.
func (h *host) installPackaged(spec Spec, unitPath, line string) error {
	shipped, err := os.ReadFile(unitPath)
	if err != nil {
		return fmt.Errorf("install: %w", err)
	}
	// A unit an earlier install wrote before the package came hides the
	// packaged one (and its upgrades).
	if stale := filepath.Join(h.etcDir, spec.Name+".service"); fileExists(stale) {
		return fmt.Errorf("install: %s (from an install before the package) hides the packaged %s: run `sudo %s uninstall`, then install again",
			stale, unitPath, spec.Name)
	}
	dropIn := h.dropIn(spec)
	if line == unitExecStart(string(shipped)) {
		if err := os.Remove(dropIn); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("install: remove old drop-in: %w", err)
		}
		fmt.Fprintf(h.stdout, "using the packaged unit %s\n", unitPath)
	} else {
		conf := "# Written by `" + spec.Name + " install`; `" + spec.Name + " uninstall` removes it.\n" +
			"[Service]\nExecStart=\nExecStart=" + line + "\n"
		if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if err := atomicfile.WriteFile(dropIn, []byte(conf), 0o644); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		fmt.Fprintf(h.stdout, "using the packaged unit %s with your flags in %s:\n  ExecStart=%s\n", unitPath, dropIn, line)
	}
	for _, a := range [][]string{{"daemon-reload"}, {"enable", spec.Name + ".service"}} {
		if err := systemctl(a...); err != nil {
			return fmt.Errorf("install: %w", err)
		}
	}
	fmt.Fprintf(h.stdout, "enabled %s.service; start it with: sudo %s start\n", spec.Name, spec.Name)
	return nil
}

func (h *host) uninstall(spec Spec) error {
	// Stop first: kardianos only disables and deletes the unit, which
	// would leave the service running without one.
	if err := systemctl("stop", spec.Name+".service"); err != nil {
		fmt.Fprintf(h.stdout, "note: %v\n", err)
	}
	if pkg := h.packagedUnit(spec); pkg != "" {
		if err := os.Remove(h.dropIn(spec)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("uninstall: %w", err)
		}
		// A unit written by an install from before the package.
		if err := os.Remove(filepath.Join(h.etcDir, spec.Name+".service")); err == nil {
			fmt.Fprintf(h.stdout, "removed %s, which hid the packaged unit\n", filepath.Join(h.etcDir, spec.Name+".service"))
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("uninstall: %w", err)
		}
		_ = os.Remove(filepath.Dir(h.dropIn(spec))) // only if empty
		for _, a := range [][]string{{"disable", spec.Name + ".service"}, {"daemon-reload"}} {
			if err := systemctl(a...); err != nil {
				return fmt.Errorf("uninstall: %w", err)
			}
		}
		fmt.Fprintf(h.stdout, "stopped and disabled %s.service; the package still ships %s (apt remove %s to remove it)\n",
			spec.Name, pkg, spec.Name)
		return nil
	}
	svc, err := h.service(spec, nil, "")
	if err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	if err := svc.Uninstall(); err != nil {
		return fmt.Errorf("uninstall: %w", err)
	}
	fmt.Fprintf(h.stdout, "stopped and removed %s.service (state and configuration are kept)\n", spec.Name)
	return nil
}

func (h *host) status(spec Spec) error {
	s, err := Status(spec.Name)
	if err != nil {
		return err
	}
	fmt.Fprintf(h.stdout, "%s: %s\n", spec.Name, s)
	return nil
}

// Status returns "running" or "stopped" for the named unit, or an error
// (not installed, failed, or no systemd). The thermostat's own `status`
// can show it beside the agent's state.
func Status(name string) (string, error) {
	svc, err := service.New(program{}, &service.Config{Name: name})
	if err != nil {
		return "", fmt.Errorf("service status: %w", err)
	}
	st, err := svc.Status()
	switch {
	case errors.Is(err, service.ErrNotInstalled):
		return "", fmt.Errorf("service status: %s is not installed (sudo %s install)", name, name)
	case err != nil:
		return "", fmt.Errorf("service status: %w (journalctl -u %s)", err, name)
	case st == service.StatusRunning:
		return "running", nil
	case st == service.StatusStopped:
		return "stopped", nil
	}
	return "", fmt.Errorf("service status: %s: unknown", name)
}

func fileExists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func systemctl(args ...string) error {
	out, err := exec.Command("systemctl", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("systemctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ensureAccount creates the supplementary groups and the system user the
// unit names, when missing, as the .deb's postinst does.
func ensureAccount(w io.Writer, spec Spec) error {
	for _, g := range spec.Groups {
		if _, err := user.LookupGroup(g); err == nil {
			continue
		}
		if out, err := exec.Command("groupadd", "--system", g).CombinedOutput(); err != nil {
			return fmt.Errorf("create group %s: %w: %s", g, err, strings.TrimSpace(string(out)))
		}
		fmt.Fprintf(w, "created system group %s\n", g)
	}
	if spec.User == "" {
		return nil
	}
	if _, err := user.Lookup(spec.User); err == nil {
		return nil
	}
	out, err := exec.Command("useradd", "--system", "--user-group",
		"--home-dir", "/var/lib/"+spec.Name, "--no-create-home",
		"--shell", "/usr/sbin/nologin", "--comment", spec.Description, spec.User).CombinedOutput()
	if err != nil {
		return fmt.Errorf("create user %s: %w: %s", spec.User, err, strings.TrimSpace(string(out)))
	}
	fmt.Fprintf(w, "created system user %s\n", spec.User)
	return nil
}
