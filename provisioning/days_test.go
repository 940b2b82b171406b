package provisioning_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/provisioning"
)

// TestDaysFlag: every command that issues takes --days, and refuses a
// lifetime that is no lifetime as a usage error.
func TestDaysFlag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	mustPKI(t, "init", "--dir", dir, "--days", "400")
	mustPKI(t, "server", "--dir", dir, "--host", "broker.lan", "--days", "30")
	mustPKI(t, "controller", "--dir", dir, "--days", "20")
	mustPKI(t, "device", "d1", "--dir", dir, "--days", "7")
	csrDir := t.TempDir()
	csrPEM, _, err := provisioning.NewCSR("d2")
	if err != nil {
		t.Fatal(err)
	}
	csrFile := filepath.Join(csrDir, "d2.csr")
	if err := os.WriteFile(csrFile, csrPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	mustPKI(t, "sign", csrFile, "--dir", dir, "--days", "3")
	day := 24 * time.Hour
	for _, tc := range []struct {
		file string
		want time.Duration
	}{
		{"ca.crt", 400 * day},
		{"server.crt", 30 * day},
		{"controller.crt", 20 * day},
		{"devices/d1/device.crt", 7 * day},
		{"devices/d2/device.crt", 3 * day},
	} {
		c := readCert(t, filepath.Join(dir, tc.file))
		got := c.NotAfter.Sub(c.NotBefore)
		if tc.file == "ca.crt" {
			got -= time.Hour // the CA is backdated by an hour from now
		}
		if got != tc.want {
			t.Errorf("%s: lifetime %v, want %v", tc.file, got, tc.want)
		}
	}
	for _, bad := range []string{"0", "-1", "36501"} {
		if _, _, err := runPKI(t, "device", "d3", "--dir", dir, "--days", bad); !errors.Is(err, cli.ErrUsage) {
			t.Errorf("--days %s: err %v, want a usage error", bad, err)
		}
	}
}
