package provisioning_test

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/provisioning"
)

// TestPKIRevoke: `pki revoke` records a device (with every serial known
// for it) or one serial in the data directory's list, twice is harmless,
// and the CRL `pki crl` writes is signed by the CA and lists them.
func TestPKIRevoke(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	data := t.TempDir()
	mustPKI(t, "init", "--dir", dir)
	mustPKI(t, "device", "d1", "--dir", dir)
	mustPKI(t, "device", "d2", "--dir", dir)
	d1 := readCert(t, filepath.Join(dir, "devices/d1/device.crt"))
	d2 := readCert(t, filepath.Join(dir, "devices/d2/device.crt"))

	out := mustPKI(t, "revoke", "d1", "--dir", dir, "--data-dir", data, "--reason", "stolen")
	if !strings.Contains(out, "Revoked device d1") {
		t.Errorf("revoke output:\n%s", out)
	}
	if out := mustPKI(t, "revoke", "d1", "--dir", dir, "--data-dir", data); !strings.Contains(out, "Already revoked") {
		t.Errorf("second revoke output:\n%s", out)
	}
	// A device the PKI has no certificate of (its certificates were
	// renewed by the controller, or made elsewhere).
	if out := mustPKI(t, "revoke", "d9", "--dir", dir, "--data-dir", data); !strings.Contains(out, "Revoked device d9") || !strings.Contains(out, "known serials: 0") {
		t.Errorf("revoke of a device without a known certificate:\n%s", out)
	}
	// A serial as openssl prints it: upper case with colons.
	var colon []string
	for _, b := range d2.SerialNumber.Bytes() {
		colon = append(colon, strings.ToUpper(hexByte(b)))
	}
	mustPKI(t, "revoke", strings.Join(colon, ":"), "--dir", dir, "--data-dir", data)

	list, err := provisioning.LoadRevocations(data)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		cert *x509.Certificate
		want bool
	}{{d1, true}, {d2, true}} {
		if _, got := list.Check(tc.cert); got != tc.want {
			t.Errorf("%s revoked %v, want %v", tc.cert.Subject.CommonName, got, tc.want)
		}
	}
	mustPKI(t, "device", "d3", "--dir", dir)
	if _, got := list.Check(readCert(t, filepath.Join(dir, "devices/d3/device.crt"))); got {
		t.Error("d3 revoked")
	}

	mustPKI(t, "crl", "--dir", dir, "--data-dir", data)
	b, err := os.ReadFile(filepath.Join(dir, provisioning.CRLFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	crl, err := x509.ParseRevocationList(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	ca := readCert(t, filepath.Join(dir, "ca.crt"))
	if err := crl.CheckSignatureFrom(ca); err != nil {
		t.Errorf("CRL signature: %v", err)
	}
	got := map[string]bool{}
	for _, e := range crl.RevokedCertificateEntries {
		got[provisioning.SerialHex(e.SerialNumber)] = true
	}
	if len(got) != 2 || !got[provisioning.SerialHex(d1.SerialNumber)] || !got[provisioning.SerialHex(d2.SerialNumber)] {
		t.Errorf("CRL lists %v", got)
	}
	// Revoking with a CRL present refreshes it and says how to make
	// Mosquitto read it.
	out = mustPKI(t, "revoke", "d3", "--dir", dir, "--data-dir", data)
	if !strings.Contains(out, "CRL refreshed") || !strings.Contains(out, "SIGHUP") {
		t.Errorf("revoke with a CRL output:\n%s", out)
	}
	// Without --data-dir the list is kept in the PKI directory, beside
	// ca.crt, where serve (--ca DIR/ca.crt) reads it too; the CRL states
	// both lists.
	if out := mustPKI(t, "revoke", "d7", "--dir", dir); !strings.Contains(out, filepath.Join(dir, provisioning.RevokedFile)) {
		t.Errorf("revoke without --data-dir:\n%s", out)
	}
	if both, err := provisioning.LoadRevocationsFrom(data, dir); err != nil || len(both.Entries) != 5 {
		t.Errorf("both lists: %v entries, %v", both, err)
	}
	for _, bad := range [][]string{{"revoke", "--data-dir", data}, {"revoke", "Bad/Id", "--data-dir", data}} {
		_, _, err := runPKI(t, bad...)
		if err == nil {
			t.Errorf("%v: no error", bad)
		} else if bad[1] == "--data-dir" && !errors.Is(err, cli.ErrUsage) {
			t.Errorf("%v: %v, want a usage error", bad, err)
		}
	}
}

func hexByte(b byte) string {
	const digits = "0123456789abcdef"
	return string([]byte{digits[b>>4], digits[b&15]})
}
