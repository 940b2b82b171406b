package svcctl

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/kardianos/service"
)

// forcedSystemd is kardianos' own linux-systemd system, chosen although
// this machine's PID 1 is not systemd.
type forcedSystemd struct{ service.System }

func (forcedSystemd) Detect() bool { return true }

// inNamespace is TestInstallKardianos inside its namespace.
func inNamespace(t *testing.T) {
	for _, s := range service.AvailableSystems() {
		if s.String() == "linux-systemd" {
			service.ChooseSystem(forcedSystemd{s})
		}
	}
	if service.Platform() != "linux-systemd" {
		t.Fatalf("platform %q", service.Platform())
	}
	logFile := os.Getenv("SVCCTL_CALLS")
	exe := filepath.Join(t.TempDir(), "thermo stat") // a space, escaped as \x20
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	spec := Thermostat
	spec.Name = "thermostat-svcctl-test"
	h := &host{
		stdout:       os.Stdout,
		euid:         os.Geteuid,
		platform:     service.Platform,
		executable:   func() (string, error) { return exe, nil },
		packagedDirs: []string{t.TempDir()}, // nothing packaged
		etcDir:       "/etc/systemd/system",
	}
	if _, err := h.handle(spec, []string{"install", "--hal", "sim", "--topic-root", "50%"}, nil); err != nil {
		t.Fatal(err)
	}
	unitFile := "/etc/systemd/system/" + spec.Name + ".service"
	got, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	// Our unit, line for line, but for ExecStart.
	wantExec := `ExecStart=` + strings.ReplaceAll(exe, " ", `\x20`) +
		` run --config /etc/thermostat/config.yaml --state-dir /var/lib/thermostat --control-socket /run/thermostat/control.sock --hal sim --topic-root "50%%"`
	want := strings.Replace(spec.Unit, "ExecStart="+unitExecStart(spec.Unit), wantExec, 1)
	if string(got) != want {
		t.Fatalf("unit written by install:\n%s\nwant:\n%s", got, want)
	}
	c := calls(t, logFile)
	if !slices.Contains(c, "systemctl enable "+spec.Name+".service") || !slices.Contains(c, "systemctl daemon-reload") {
		t.Errorf("calls %q: want enable and daemon-reload", c)
	}

	// systemd parses what was written, % and all.
	if analyze, err := exec.LookPath("systemd-analyze"); err == nil {
		// verify needs the ExecStart binary and the targets: use the host's
		// units under a root holding a copy of our unit.
		root := t.TempDir()
		for _, d := range []string{filepath.Dir(filepath.Join(root, exe)), filepath.Join(root, "etc/systemd/system"), filepath.Join(root, "usr/lib/systemd")} {
			os.MkdirAll(d, 0o755)
		}
		os.WriteFile(filepath.Join(root, exe), []byte("#!/bin/sh\n"), 0o755)
		os.WriteFile(filepath.Join(root, unitFile), got, 0o644)
		if out, err := exec.Command("cp", "-a", "/usr/lib/systemd/system", filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		out, err := exec.Command(analyze, "verify", "--root="+root, spec.Name+".service").CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "" {
			t.Errorf("systemd-analyze verify of the installed unit: %v\n%s", err, out)
		}
	}

	// The control verbs go through kardianos to systemctl.
	os.Truncate(logFile, 0)
	for _, args := range [][]string{{"start"}, {"service", "stop"}, {"restart"}} {
		if _, err := h.handle(spec, args, nil); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
	wantCalls := []string{"systemctl start " + spec.Name + ".service", "systemctl stop " + spec.Name + ".service", "systemctl restart " + spec.Name + ".service"}
	if c := calls(t, logFile); !slices.Equal(c, wantCalls) {
		t.Errorf("calls %q, want %q", c, wantCalls)
	}
	// The fake systemctl answers nothing to is-active: not installed.
	if _, err := h.handle(spec, []string{"service", "status"}, nil); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("status: %v", err)
	}

	// A second install refuses rather than overwrite.
	if _, err := h.handle(spec, []string{"install"}, nil); err == nil || !strings.Contains(err.Error(), "already installed") {
		t.Errorf("second install: %v", err)
	}
	// Uninstall stops, disables and removes the unit.
	os.Truncate(logFile, 0)
	if _, err := h.handle(spec, []string{"uninstall"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(unitFile); !os.IsNotExist(err) {
		t.Errorf("unit kept after uninstall: %v", err)
	}
	want2 := []string{"systemctl stop " + spec.Name + ".service", "systemctl disable " + spec.Name + ".service", "systemctl daemon-reload"}
	if c := calls(t, logFile); !slices.Equal(c, want2) {
		t.Errorf("uninstall calls %q, want %q", c, want2)
	}
}
