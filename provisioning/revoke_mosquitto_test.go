package provisioning_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// TestMosquittoCRL: a real Mosquitto (2.0.11 here) with the generated
// crlfile refuses a revoked certificate once it has read the refreshed
// CRL, which it does on SIGHUP (and at start); the others still connect.
// docs/certificates.md states it.
func TestMosquittoCRL(t *testing.T) {
	pki := testenv.NewPKI(t)
	dataDir := t.TempDir()
	crl := filepath.Join(t.TempDir(), provisioning.CRLFile)
	if _, err := provisioning.WriteCRL(pki.CA, crl, 0, dataDir); err != nil {
		t.Fatal(err)
	}
	mq := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{CRLFile: crl})
	dial := func(id string) error {
		c, k := pki.Client(t, id)
		cl, err := testenv.Dial(mq.URL(), testenv.ClientOptions{CAFile: pki.CAFile, CertFile: c, KeyFile: k})
		if err == nil {
			cl.Close()
		}
		return err
	}
	if err := dial("d1"); err != nil {
		t.Fatalf("d1 before revocation: %v", err)
	}
	// d3 stays connected across the refresh: is it cut?
	d3 := pki.Connect(t, mq.URL(), "d3")
	for _, id := range []string{"d1", "d3"} {
		cert, _ := pki.Client(t, id)
		if _, _, err := provisioning.Revoke(dataDir, "", provisioning.Revocation{Serials: []string{serialOf(t, cert)}, Reason: "stolen"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := provisioning.WriteCRL(pki.CA, crl, 0, dataDir); err != nil {
		t.Fatal(err)
	}
	if err := dial("d1"); err != nil {
		t.Fatalf("d1 refused before Mosquitto was told to read the CRL: %v", err)
	}
	mq.Hangup()
	testenv.Eventually(t, testenv.WaitTimeout, "Mosquitto refuses the revoked d1 after SIGHUP", func() (bool, string) {
		err := dial("d1")
		return err != nil && strings.Contains(err.Error(), "revoked"), "last attempt: " + errString(err)
	})
	if err := dial("d2"); err != nil {
		t.Errorf("d2 (not revoked) after SIGHUP: %v", err)
	}
	// Mosquitto 2.0.11 checks the CRL at the handshake only.
	if !d3.Paho.IsConnectionOpen() {
		t.Log("Mosquitto cut the connected revoked d3 at SIGHUP")
	} else {
		t.Log("Mosquitto left the connected revoked d3 connected after SIGHUP")
	}
	mq.Restart()
	if err := dial("d1"); err == nil {
		t.Error("revoked d1 connected after Mosquitto restarted")
	}
}

func errString(err error) string {
	if err == nil {
		return "connected"
	}
	return err.Error()
}

func serialOf(t *testing.T, certFile string) string {
	t.Helper()
	return provisioning.SerialHex(readCert(t, certFile).SerialNumber)
}
