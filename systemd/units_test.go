package systemd

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// directives parses a unit into "Section.Key" -> values.
func directives(t *testing.T, unit string) map[string][]string {
	t.Helper()
	m := map[string][]string{}
	section := ""
	for i, l := range strings.Split(unit, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "" || strings.HasPrefix(l, "#"):
		case strings.HasPrefix(l, "[") && strings.HasSuffix(l, "]"):
			section = strings.Trim(l, "[]")
		default:
			k, v, ok := strings.Cut(l, "=")
			if !ok || section == "" {
				t.Fatalf("line %d: %q is not a directive", i+1, l)
			}
			m[section+"."+k] = append(m[section+"."+k], v)
		}
	}
	return m
}

func TestUnitDirectives(t *testing.T) {
	common := map[string]string{
		"Service.Type":            "notify",
		"Service.Restart":         "on-failure",
		"Service.ProtectSystem":   "strict",
		"Service.ProtectHome":     "yes",
		"Service.PrivateTmp":      "yes",
		"Service.NoNewPrivileges": "yes",
		"Install.WantedBy":        "multi-user.target",
	}
	for _, tc := range []struct {
		name, unit string
		want       map[string]string
	}{
		{"thermostat", ThermostatUnit, map[string]string{
			"Service.ExecStart":              "/usr/bin/thermostat run --config /etc/thermostat/config.yaml --state-dir /var/lib/thermostat --control-socket /run/thermostat/control.sock",
			"Service.User":                   "thermostat",
			"Service.SupplementaryGroups":    "gpio i2c",
			"Service.StateDirectory":         "thermostat",
			"Service.ConfigurationDirectory": "thermostat",
			"Service.RuntimeDirectory":       "thermostat",
			"Service.WatchdogSec":            "30s",
		}},
		{"controllerlite", ControllerliteUnit, map[string]string{
			"Service.ExecStart":              "/usr/bin/controllerlite serve --ca /etc/controllerlite/ca.crt --cert /etc/controllerlite/server.crt --key /etc/controllerlite/server.key --data-dir /var/lib/controllerlite",
			"Service.User":                   "controllerlite",
			"Service.StateDirectory":         "controllerlite",
			"Service.ConfigurationDirectory": "controllerlite",
			"Service.WatchdogSec":            "60s",
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := directives(t, tc.unit)
			for k, v := range common {
				tc.want[k] = v
			}
			for k, v := range tc.want {
				if got := d[k]; len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want exactly %q", k, got, v)
				}
			}
			// The thermostat drives GPIO and I2C through /dev and /sys:
			// these would cut it off from its hardware.
			if tc.name == "thermostat" {
				for _, k := range []string{"Service.PrivateDevices", "Service.DevicePolicy", "Service.DeviceAllow", "Service.ProtectKernelTunables", "Service.ProtectClock", "Service.DynamicUser"} {
					if _, ok := d[k]; ok {
						t.Errorf("%s set: it hides the hardware from periph", k)
					}
				}
			}
			if strings.Contains(tc.unit, "{{") {
				t.Error("unit contains template markers")
			}
		})
	}
}

// TestUnitsVerify runs systemd-analyze verify on each unit in a root where
// its ExecStart binary exists and the host's system units are present.
func TestUnitsVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	for name, unit := range map[string]string{"thermostat": ThermostatUnit, "controllerlite": ControllerliteUnit} {
		t.Run(name, func(t *testing.T) {
			root := verifyRoot(t)
			exe := filepath.Join(root, "usr/bin", name)
			if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
				t.Fatal(err)
			}
			unitFile := filepath.Join(root, "etc/systemd/system", name+".service")
			if err := os.WriteFile(unitFile, []byte(unit), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(analyze, "verify", "--root="+root, name+".service").CombinedOutput()
			if err != nil || len(strings.TrimSpace(string(out))) > 0 {
				t.Fatalf("systemd-analyze verify: %v\n%s", err, out)
			}

			// The check is real: a broken directive is reported.
			bad := strings.Replace(unit, "ProtectHome=yes", "ProtectHome=sometimes", 1)
			if err := os.WriteFile(unitFile, []byte(bad), 0o644); err != nil {
				t.Fatal(err)
			}
			out, _ = exec.Command(analyze, "verify", "--root="+root, name+".service").CombinedOutput()
			if !strings.Contains(string(out), "sometimes") {
				t.Fatalf("verify did not report a bad ProtectHome=: %s", out)
			}
		})
	}
}

// verifyRoot makes a directory tree in which `systemd-analyze verify
// --root=DIR` can load a unit: the host's system units (targets the unit
// depends on) under usr/lib/systemd/system, and empty usr/bin and
// etc/systemd/system.
func verifyRoot(t testing.TB) string {
	t.Helper()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib/systemd", "etc/systemd/system"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	src := "/usr/lib/systemd/system"
	if _, err := os.Stat(src); err != nil {
		src = "/lib/systemd/system"
	}
	if out, err := exec.Command("cp", "-a", src, filepath.Join(root, "usr/lib/systemd/")).CombinedOutput(); err != nil {
		t.Fatalf("copy system units: %v: %s", err, out)
	}
	if _, err := os.Stat(filepath.Join(root, "usr/lib/systemd/system/multi-user.target")); err != nil {
		t.Skip("no systemd units on this host to verify against")
	}
	return root
}
