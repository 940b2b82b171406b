package broker

import (
	"crypto/x509"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// TestRevokedCertificates: the broker refuses a revoked certificate at
// CONNECT, and CutRevoked disconnects a connected one at once (its will
// goes out) while the others stay; revocation by serial touches only
// that certificate.
func TestRevokedCertificates(t *testing.T) {
	pki := testenv.NewPKI(t)
	var mu sync.Mutex
	list := &provisioning.Revocations{}
	revoked := func(c *x509.Certificate) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		e, ok := list.Check(c)
		return e.Reason, ok
	}
	b := startBrokerWith(t, pki, Options{Revoked: revoked}, nil)
	status := subscribe(t, b.Broker, "thermo/+/status")

	d1, err := connectCuttable(t, pki, b.url, "d1", "thermo/d1/status", `{"v":1,"online":false}`)
	if err != nil {
		t.Fatal(err)
	}
	defer d1.cut()
	d2 := pki.Connect(t, b.url, "d2")

	mu.Lock()
	list = &provisioning.Revocations{Entries: []provisioning.Revocation{{ID: "d1", Reason: "stolen"}}}
	mu.Unlock()
	if cut := b.CutRevoked(); len(cut) != 1 || cut[0] != "d1" {
		t.Fatalf("CutRevoked cut %v, want [d1]", cut)
	}
	status.waitFor(t, "thermo/d1/status", `{"v":1,"online":false}`)
	if !d2.Paho.IsConnectionOpen() {
		t.Error("d2 was cut too")
	}
	for _, tc := range []struct {
		name    string
		id      string
		list    provisioning.Revocations
		refused bool
	}{
		{"revoked id", "d1", provisioning.Revocations{Entries: []provisioning.Revocation{{ID: "d1"}}}, true},
		{"other id", "d3", provisioning.Revocations{Entries: []provisioning.Revocation{{ID: "d1"}}}, false},
		{"revoked serial", "d4", provisioning.Revocations{Entries: []provisioning.Revocation{{Serials: []string{serial(t, pki, "d4")}}}}, true},
		{"other serial", "d5", provisioning.Revocations{Entries: []provisioning.Revocation{{Serials: []string{serial(t, pki, "d4")}}}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mu.Lock()
			list = &tc.list
			mu.Unlock()
			c, k := pki.Client(t, tc.id)
			cl, err := testenv.Dial(b.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: c, KeyFile: k})
			if err == nil {
				cl.Close()
			}
			if (err != nil) != tc.refused {
				t.Fatalf("connect %s: %v, want refused %v", tc.id, err, tc.refused)
			}
			if tc.refused {
				b.log.waitFor(t, "connection refused", "revoked")
			}
		})
	}
}

func serial(t *testing.T, pki *testenv.PKI, id string) string {
	t.Helper()
	c, k := pki.Client(t, id)
	cert, _, err := provisioning.LoadKeyPair(c, k)
	if err != nil {
		t.Fatal(err)
	}
	return provisioning.SerialHex(cert.Leaf.SerialNumber)
}
