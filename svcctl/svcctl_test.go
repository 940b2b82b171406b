package svcctl

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRecordedArgs(t *testing.T) {
	cwd, _ := os.Getwd()
	for _, tc := range []struct {
		name     string
		spec     Spec
		flags    []string
		want     []string
		warnings int
		err      string
	}{
		{"defaults", Thermostat, nil,
			[]string{"run", "--config", "/etc/thermostat/config.yaml", "--state-dir", "/var/lib/thermostat", "--control-socket", "/run/thermostat/control.sock"}, 0, ""},
		{"given flags replace defaults", Thermostat, []string{"--config=/srv/t.yaml", "-hal", "sim", "--broker", "mqtts://pi:8883"},
			[]string{"run", "--state-dir", "/var/lib/thermostat", "--control-socket", "/run/thermostat/control.sock", "--config", "/srv/t.yaml", "-hal", "sim", "--broker", "mqtts://pi:8883"}, 0, ""},
		{"relative paths made absolute", Thermostat, []string{"--ca", "pki/ca.crt", "-cert=dev.crt"},
			[]string{"run", "--config", "/etc/thermostat/config.yaml", "--state-dir", "/var/lib/thermostat", "--control-socket", "/run/thermostat/control.sock",
				"--ca", filepath.Join(cwd, "pki/ca.crt"), "--cert", filepath.Join(cwd, "dev.crt")}, 0, ""},
		{"state outside the sandbox warns", Thermostat, []string{"--state-dir", "/home/pi/state"},
			[]string{"run", "--config", "/etc/thermostat/config.yaml", "--control-socket", "/run/thermostat/control.sock", "--state-dir", "/home/pi/state"}, 1, ""},
		{"state below the state directory is fine", Thermostat, []string{"--state-dir", "/var/lib/thermostat/kitchen"},
			[]string{"run", "--config", "/etc/thermostat/config.yaml", "--control-socket", "/run/thermostat/control.sock", "--state-dir", "/var/lib/thermostat/kitchen"}, 0, ""},
		{"controllerlite", Controllerlite, []string{"--http", "0.0.0.0:8080", "--http-token-file", "/etc/controllerlite/token"},
			[]string{"serve", "--ca", "/etc/controllerlite/ca.crt", "--cert", "/etc/controllerlite/server.crt", "--key", "/etc/controllerlite/server.key",
				"--data-dir", "/var/lib/controllerlite", "--http", "0.0.0.0:8080", "--http-token-file", "/etc/controllerlite/token"}, 0, ""},
		{"missing value", Thermostat, []string{"--config"}, nil, 0, "--config needs a value"},
		{"empty path", Thermostat, []string{"--config="}, nil, 0, "empty path"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, warnings, err := recordedArgs(tc.spec, tc.flags)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("args\n got %q\nwant %q", got, tc.want)
			}
			if len(warnings) != tc.warnings {
				t.Errorf("warnings %q, want %d", warnings, tc.warnings)
			}
		})
	}
}

func TestEscapeWord(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/etc/thermostat/config.yaml", "/etc/thermostat/config.yaml"},
		{"--broker=mqtts://pi.local:8883", "--broker=mqtts://pi.local:8883"},
		{"", `""`},
		{"/home/pi/my config.yaml", `"/home/pi/my config.yaml"`},
		{`say "hi"`, `"say \"hi\""`},
		{"100%", `"100%%"`},
		{"$HOME", `"$$HOME"`},
		{`a\b`, `"a\\b"`},
	} {
		if got := escapeWord(tc.in); got != tc.want {
			t.Errorf("escapeWord(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

// TestShippedExecStart: `NAME install` without flags, from the packaged
// binary, records exactly the packaged ExecStart, so it adds no drop-in.
func TestShippedExecStart(t *testing.T) {
	for _, spec := range []Spec{Thermostat, Controllerlite} {
		args, _, err := recordedArgs(spec, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := execLine("/usr/bin/"+spec.Name, args), unitExecStart(spec.Unit); got != want {
			t.Errorf("%s: recorded ExecStart\n %s\nshipped\n %s", spec.Name, got, want)
		}
		tmpl, err := unitTemplate(spec.Unit)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Count(tmpl, "{{range Arguments}}") != 1 || strings.Contains(tmpl, "ExecStart=/usr/bin") {
			t.Errorf("%s: template ExecStart not replaced:\n%s", spec.Name, tmpl)
		}
	}
	if _, err := unitTemplate("[Service]\nExecStart=/a\nExecStart=/b\n"); err == nil {
		t.Error("two ExecStart lines accepted")
	}
	if _, err := unitTemplate("[Service]\nExecStart=/a {{x}}\n"); err == nil {
		t.Error("template markers accepted")
	}
}

// fakeTools puts systemctl, useradd and groupadd first in PATH: each logs
// its arguments, one call a line, to the returned file.
func fakeTools(t *testing.T) (logFile string) {
	t.Helper()
	dir := t.TempDir()
	logFile = filepath.Join(dir, "calls.log")
	for _, tool := range []string{"systemctl", "useradd", "groupadd"} {
		script := fmt.Sprintf("#!/bin/sh\necho \"%s $*\" >> %q\n", tool, logFile)
		if err := os.WriteFile(filepath.Join(dir, tool), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return logFile
}

func calls(t *testing.T, logFile string) []string {
	t.Helper()
	b, err := os.ReadFile(logFile)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// testHost is a root host with systemd whose packaged and /etc unit
// directories are temporary, and whose executable is exe.
func testHost(t *testing.T, exe string) (*host, *bytes.Buffer) {
	t.Helper()
	out := &bytes.Buffer{}
	return &host{
		stdout:       out,
		euid:         func() int { return 0 },
		platform:     func() string { return "linux-systemd" },
		executable:   func() (string, error) { return exe, nil },
		packagedDirs: []string{t.TempDir()},
		etcDir:       t.TempDir(),
	}, out
}

// TestRouting: which arguments are service commands. Those that reach
// systemctl are run in TestInstallKardianos.
func TestRouting(t *testing.T) {
	logFile := fakeTools(t)
	for _, tc := range []struct {
		spec    Spec
		args    []string
		handled bool
		err     string
	}{
		{Thermostat, nil, false, ""},
		{Thermostat, []string{"run", "--hal", "sim"}, false, ""},
		{Thermostat, []string{"version"}, false, ""},
		{Thermostat, []string{"status"}, false, ""}, // the agent's status
		{Thermostat, []string{"service"}, true, "usage: thermostat service install|"},
		{Thermostat, []string{"service", "run"}, true, "usage:"},
		{Thermostat, []string{"start", "--now"}, true, "takes no arguments"},
		{Controllerlite, []string{"status", "-v"}, true, "takes no arguments"},
		{Thermostat, []string{"service", "stop", "x"}, true, "takes no arguments"},
		{Thermostat, []string{"install", "--broker", "x", "-h"}, true, ""},
		{Controllerlite, []string{"service", "status", "--help"}, true, ""},
	} {
		t.Run(strings.Join(append([]string{tc.spec.Name}, tc.args...), " "), func(t *testing.T) {
			h, _ := testHost(t, "/nonexistent")
			handled, err := h.handle(tc.spec, tc.args, nil)
			if handled != tc.handled {
				t.Errorf("handled = %v, want %v", handled, tc.handled)
			}
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("err = %v, want %q", err, tc.err)
			}
		})
	}
	if c := calls(t, logFile); c != nil {
		t.Errorf("ran %q", c)
	}
}

func TestRefusals(t *testing.T) {
	logFile := fakeTools(t)
	for _, tc := range []struct {
		name     string
		euid     int
		platform string
		args     []string
		is       error
		want     string
	}{
		{"not root", 1000, "linux-systemd", []string{"install"}, ErrNotRoot, "sudo thermostat install"},
		{"not root stop", 1000, "linux-systemd", []string{"stop"}, ErrNotRoot, "sudo thermostat stop"},
		{"no service manager", 0, "", []string{"install"}, ErrNoSystemd, "no service manager found"},
		{"sysv", 0, "unix-systemv", []string{"start"}, ErrNoSystemd, "found unix-systemv"},
		{"status needs systemd, not root", 1000, "unix-systemv", []string{"service", "status"}, ErrNoSystemd, "thermostat run"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := testHost(t, "/nonexistent")
			h.euid = func() int { return tc.euid }
			h.platform = func() string { return tc.platform }
			handled, err := h.handle(Thermostat, tc.args, nil)
			if !handled || !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("handled %v, err %v; want %v containing %q", handled, err, tc.is, tc.want)
			}
		})
	}
	if c := calls(t, logFile); c != nil {
		t.Errorf("refused commands still ran %q", c)
	}
}

func TestInstallChecksFlags(t *testing.T) {
	logFile := fakeTools(t)
	h, _ := testHost(t, "/nonexistent")
	check := func(args []string) error {
		if slices.Contains(args, "--bogus") {
			return errors.New("flag provided but not defined: -bogus")
		}
		return nil
	}
	_, err := h.handle(Thermostat, []string{"install", "--bogus"}, check)
	if err == nil || !strings.Contains(err.Error(), "not defined: -bogus") {
		t.Fatalf("err = %v", err)
	}
	if c := calls(t, logFile); c != nil {
		t.Errorf("a refused install ran %q", c)
	}
}

// TestInstallPackaged: where the .deb shipped the unit, install enables it
// and writes only a drop-in, and only when the flags differ.
func TestInstallPackaged(t *testing.T) {
	exe := filepath.Join(t.TempDir(), "thermostat")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	// The unit as the package would ship it for a binary at exe.
	args, _, _ := recordedArgs(Thermostat, nil)
	shipped := strings.Replace(Thermostat.Unit, unitExecStart(Thermostat.Unit), execLine(exe, args), 1)

	logFile := fakeTools(t)
	h, out := testHost(t, exe)
	pkgUnit := filepath.Join(h.packagedDirs[0], "thermostat.service")
	if err := os.WriteFile(pkgUnit, []byte(shipped), 0o644); err != nil {
		t.Fatal(err)
	}
	dropIn := filepath.Join(h.etcDir, "thermostat.service.d", "10-install-flags.conf")
	etcUnit := filepath.Join(h.etcDir, "thermostat.service")

	// Same flags as the package: enable only.
	if _, err := h.handle(Thermostat, []string{"install"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dropIn); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("drop-in written for the packaged flags: %v", err)
	}
	if _, err := os.Stat(etcUnit); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a second unit was written to /etc: %v", err)
	}
	c := calls(t, logFile)
	if !slices.Contains(c, "systemctl enable thermostat.service") || !slices.Contains(c, "systemctl daemon-reload") {
		t.Errorf("calls %q: want daemon-reload and enable", c)
	}
	// The account is made as the postinst makes it.
	if !slices.ContainsFunc(c, func(s string) bool {
		return strings.HasPrefix(s, "useradd --system --user-group") && strings.HasSuffix(s, " thermostat")
	}) {
		t.Errorf("calls %q: want useradd of thermostat", c)
	}
	if !strings.Contains(out.String(), "using the packaged unit "+pkgUnit) {
		t.Errorf("output %q", out)
	}

	// Other flags: a drop-in that replaces ExecStart only.
	if _, err := h.handle(Thermostat, []string{"install", "--hal", "sim", "--config", "/srv/my thermostat.yaml"}, nil); err != nil {
		t.Fatal(err)
	}
	conf, err := os.ReadFile(dropIn)
	if err != nil {
		t.Fatal(err)
	}
	wantLine := "ExecStart=" + exe + ` run --state-dir /var/lib/thermostat --control-socket /run/thermostat/control.sock --hal sim --config "/srv/my thermostat.yaml"`
	if !strings.Contains(string(conf), "[Service]\nExecStart=\n"+wantLine+"\n") {
		t.Errorf("drop-in:\n%s\nwant it to reset ExecStart and set\n%s", conf, wantLine)
	}

	// Back to the packaged flags: the drop-in goes away.
	if _, err := h.handle(Thermostat, []string{"install"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dropIn); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("drop-in kept: %v", err)
	}

	// A unit from an install before the package hides the packaged one:
	// install refuses, uninstall removes it.
	if err := os.WriteFile(etcUnit, []byte(shipped), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := h.handle(Thermostat, []string{"install"}, nil); err == nil || !strings.Contains(err.Error(), "hides the packaged") {
		t.Errorf("install with a stale /etc unit: %v", err)
	}
	if _, err := h.handle(Thermostat, []string{"uninstall"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(etcUnit); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("uninstall kept the stale unit: %v", err)
	}

	// Uninstall stops and disables, leaving the package's unit alone.
	if _, err := h.handle(Thermostat, []string{"install", "--hal", "sim"}, nil); err != nil {
		t.Fatal(err)
	}
	os.Truncate(logFile, 0)
	if _, err := h.handle(Thermostat, []string{"uninstall"}, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(dropIn)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("drop-in directory kept: %v", err)
	}
	if _, err := os.Stat(pkgUnit); err != nil {
		t.Errorf("packaged unit touched: %v", err)
	}
	if c := calls(t, logFile); !slices.Equal(c, []string{"systemctl stop thermostat.service", "systemctl disable thermostat.service", "systemctl daemon-reload"}) {
		t.Errorf("uninstall calls %q", c)
	}
}

// TestInstallKardianos runs install and uninstall through kardianos/service
// for real, in a mount namespace where /etc/systemd/system is a fresh
// tmpfs (kardianos writes there, and nowhere else can be chosen), with
// systemctl, useradd and groupadd faked. It needs root and unshare(1).
func TestInstallKardianos(t *testing.T) {
	if os.Getenv("SVCCTL_IN_NAMESPACE") == "1" {
		inNamespace(t)
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace")
	}
	unshare, err := exec.LookPath("unshare")
	if err != nil {
		t.Skip("unshare(1) not installed")
	}
	if out, err := exec.Command(unshare, "-m", "true").CombinedOutput(); err != nil {
		t.Skipf("no mount namespaces here: %v: %s", err, out)
	}
	// Under make test-arm this binary runs through qemu-arm, and the
	// kernel cannot exec it again by itself.
	if out, err := exec.Command(os.Args[0], "-test.run=^$").CombinedOutput(); err != nil {
		t.Skipf("cannot re-run the test binary (emulated?): %v: %s", err, out)
	}
	logFile := fakeTools(t)
	cmd := exec.Command(unshare, "-m", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs tmpfs /etc/systemd/system && exec "$@"`, "sh",
		os.Args[0], "-test.run=^TestInstallKardianos$", "-test.v")
	cmd.Env = append(os.Environ(), "SVCCTL_IN_NAMESPACE=1", "SVCCTL_CALLS="+logFile)
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestInstallKardianos") {
		t.Fatalf("in the namespace: %v\n%s", err, out)
	}
	t.Logf("%s", out)
	if _, err := os.Stat("/etc/systemd/system/thermostat-svcctl-test.service"); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("the namespace leaked a unit into the real /etc/systemd/system")
	}
}
