package provisioning_test

import (
	"crypto/x509"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/provisioning"
)

// TestCertsOnlyPKCS7 round-trips certificates through the PKCS#7 EST
// answers with, and has openssl read it.
func TestCertsOnlyPKCS7(t *testing.T) {
	ca := newCA(t)
	certPEM, _, err := ca.IssueClient("d1", nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf := parseCert(t, certPEM)
	der, err := provisioning.EncodeCertsOnly([]*x509.Certificate{leaf, ca.Cert})
	if err != nil {
		t.Fatal(err)
	}
	got, err := provisioning.DecodeCertsOnly(der)
	if err != nil || len(got) != 2 || !got[0].Equal(leaf) || !got[1].Equal(ca.Cert) {
		t.Fatalf("decoded %d certificates, %v", len(got), err)
	}
	if _, err := provisioning.DecodeCertsOnly(leaf.Raw); err == nil {
		t.Error("a certificate decoded as PKCS#7")
	}
	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Skip("no openssl")
	}
	f := filepath.Join(t.TempDir(), "p7.der")
	if err := os.WriteFile(f, der, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(openssl, "pkcs7", "-inform", "DER", "-in", f, "-print_certs", "-noout").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "CN = d1") || !strings.Contains(string(out), "testenv") && !strings.Contains(string(out), "Thermofleet CA") {
		t.Errorf("openssl pkcs7: %v\n%s", err, out)
	}
}
