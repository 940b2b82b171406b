package e2e

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestRPiBoardErrorExits: `thermostat run --hal rpi` with a valid
// configuration on a host with no GPIO (this one) exits non-zero with the
// message docs/hardware.md promises, and does not panic. It used to: the
// board's constructor returned a nil *Board inside a non-nil hal.Board and
// the cleanup called Close on it.
func TestRPiBoardErrorExits(t *testing.T) {
	if matches, _ := filepath.Glob("/dev/gpiochip*"); len(matches) > 0 {
		t.Skipf("this host has GPIO (%v): the board could open", matches)
	}
	thermostatBin, _ := binaries(t)
	example, err := os.ReadFile("../firmware/thermostat.example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pki := testenv.NewPKI(t)
	cert, key := pki.Client(t, "d1")

	tests := []struct {
		name   string
		config string // the shipped example, edited
		want   string
	}{
		{"the shipped example", string(example),
			`hardware.relays.heat.pin: no GPIO pin named "GPIO17" on this board (this host has no GPIO at all`},
		{"a pin no board has", strings.Replace(string(example), "pin: GPIO17", "pin: GPIO71", 1),
			`hardware.relays.heat.pin: no GPIO pin named "GPIO71" on this board (this host has no GPIO at all`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			file := filepath.Join(dir, "thermostat.yaml")
			if err := os.WriteFile(file, []byte(tc.config), 0o600); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			// Flags win over the file: certificates of the test PKI, and
			// directories of the test's own.
			cmd := exec.CommandContext(ctx, thermostatBin, "run", "--config", file, "--hal", "rpi",
				"--broker", "mqtts://127.0.0.1:1", "--ca", pki.CAFile, "--cert", cert, "--key", key,
				"--state-dir", filepath.Join(dir, "state"), "--control-socket", filepath.Join(dir, "ctl.sock"))
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() != 1 {
				t.Fatalf("thermostat run = %v, want exit status 1; output:\n%s", err, out)
			}
			text := string(out)
			if !strings.Contains(text, "thermostat: board: ") || !strings.Contains(text, tc.want) {
				t.Errorf("output lacks %q:\n%s", tc.want, text)
			}
			for _, bad := range []string{"panic", "goroutine ", "nil pointer"} {
				if strings.Contains(text, bad) {
					t.Errorf("output contains %q:\n%s", bad, text)
				}
			}
		})
	}
}
