package renew

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestSwapSurvivesCrashAtEveryStep cuts Install short after each of its
// steps, as kill -9 would (every write before is whole and synced), then
// runs what a restart runs (Recover): the key and certificate are always a
// matching pair, the old one or the new one, the key 0600, and no .next
// file is left.
func TestSwapSurvivesCrashAtEveryStep(t *testing.T) {
	pki := testenv.NewPKI(t)
	for _, crash := range []string{"", stepKeyWritten, stepCertWritten, stepKeyRenamed, stepCertRenamed} {
		t.Run("crash after "+crash, func(t *testing.T) {
			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "device.crt"), filepath.Join(dir, "device.key")
			oldCert, oldKey, _ := pki.CA.IssueClient("d1", nil)
			write(t, certFile, oldCert, 0o644)
			write(t, keyFile, oldKey, 0o600)
			newCert, newKey, err := pki.CA.IssueClient("d1", nil)
			if err != nil {
				t.Fatal(err)
			}
			crashAt = func(s string) error {
				if s == crash {
					return errCrash
				}
				return nil
			}
			defer func() { crashAt = nil }()
			err = Install(certFile, keyFile, newCert, newKey)
			if crash != "" && !errors.Is(err, errCrash) {
				t.Fatalf("Install: %v, want the injected crash", err)
			}
			if crash == "" && err != nil {
				t.Fatal(err)
			}
			crashAt = nil
			did, err := Recover(certFile, keyFile)
			if err != nil {
				t.Fatal(err)
			}
			pair, err := tls.LoadX509KeyPair(certFile, keyFile)
			if err != nil {
				t.Fatalf("after recovery (%s): %v", did, err)
			}
			got := string(readFile(t, certFile))
			wantNew := crash == stepCertWritten || crash == stepKeyRenamed || crash == stepCertRenamed || crash == ""
			if (got == string(newCert)) != wantNew || (got != string(oldCert) && got != string(newCert)) {
				t.Errorf("after recovery (%s): new pair %v, want %v", did, got == string(newCert), wantNew)
			}
			if pair.Leaf == nil || pair.Leaf.Subject.CommonName != "d1" {
				t.Errorf("leaf %v", pair.Leaf)
			}
			if fi, err := os.Stat(keyFile); err != nil || fi.Mode().Perm() != 0o600 {
				t.Errorf("key mode %v (%v), want 0600", fi.Mode().Perm(), err)
			}
			for _, f := range []string{certFile + NextSuffix, keyFile + NextSuffix} {
				if _, err := os.Stat(f); err == nil {
					t.Errorf("%s left", f)
				}
			}
			if did2, _ := Recover(certFile, keyFile); did2 != "" {
				t.Errorf("second recovery did %q", did2)
			}
		})
	}
}

func TestInstallRefusesMismatch(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	c1, _, _ := pki.CA.IssueClient("d1", nil)
	_, k2, _ := pki.CA.IssueClient("d1", nil)
	if err := Install(filepath.Join(dir, "c"), filepath.Join(dir, "k"), c1, k2); err == nil {
		t.Fatal("installed a certificate with another key")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("files written: %v", entries)
	}
}

func write(t *testing.T, path string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, b, mode); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
