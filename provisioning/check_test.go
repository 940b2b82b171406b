package provisioning_test

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// lookupStub resolves broker.example to 10.9.8.7, fails temporarily for
// flaky.example, and knows no other name.
func lookupStub(_ context.Context, host string) ([]string, error) {
	switch host {
	case "broker.example":
		return []string{"10.9.8.7"}, nil
	case "flaky.example":
		return nil, &net.DNSError{Err: "server misbehaving", Name: host, IsTemporary: true}
	}
	return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
}

// TestCheckCertificates: every installer mistake of issue 9 (7) is refused
// with an error naming the file at fault, and the right files pass.
func TestCheckCertificates(t *testing.T) {
	p := testenv.NewPKI(t)
	d1Cert, d1Key := p.Client(t, "d1")
	ctlCert, ctlKey := p.Client(t, provisioning.ControllerCN)
	eastCert, eastKey := p.Client(t, "controller-east")
	foreignCert, foreignKey := p.ForeignClient(t, "d1")
	expiredCert, expiredKey := p.ExpiredClient(t, "d1")
	slashCert, slashKey := p.ClientWithCN(t, "Bad/Id")
	capsCert, capsKey := p.ClientWithCN(t, "D1")
	reservedCert, reservedKey := p.ClientWithCN(t, "controller")
	reserved2Cert, reserved2Key := p.ClientWithCN(t, "controller-x")
	twoCNCert, twoCNKey := p.Unchecked(t, &x509.Certificate{
		Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "controller"},
			{Type: asn1.ObjectIdentifier{2, 5, 4, 3}, Value: "d3"},
		}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	noSANCert, noSANKey := p.Unchecked(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	otherHostCert, otherHostKey := issueServer(t, p.CA, "other", "broker.example")
	foreignSrvCert, foreignSrvKey := issueServer(t, p.Foreign, "foreign", testenv.ServerHosts...)
	expiredSrvCert, expiredSrvKey := p.Unchecked(t, &x509.Certificate{
		Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		NotBefore:   time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour),
	})
	garbage := filepath.Join(t.TempDir(), "garbage.crt")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(t.TempDir(), "missing", "ca.crt")
	now := time.Now()

	server := func(cert, key, listen string) provisioning.CertCheck {
		return provisioning.CertCheck{CAFile: p.CAFile, CertFile: cert, KeyFile: key, Use: provisioning.UseServer,
			Listen: listen, Now: now, LookupHost: lookupStub}
	}
	device := func(ca, cert, key string) provisioning.CertCheck {
		return provisioning.CertCheck{CAFile: ca, CertFile: cert, KeyFile: key, Use: provisioning.UseDevice}
	}
	controller := func(cert, key string) provisioning.CertCheck {
		return provisioning.CertCheck{CAFile: p.CAFile, CertFile: cert, KeyFile: key, Use: provisioning.UseController, Now: now}
	}
	at := func(c provisioning.CertCheck, t time.Time) provisioning.CertCheck { c.Now = t; return c }

	tests := []struct {
		name  string
		check provisioning.CertCheck
		want  []string // substrings of the error; none: the check passes
	}{
		// The broker's server certificate (controllerlite serve).
		{"server, loopback IP", server(p.ServerCert, p.ServerKey, "127.0.0.1:8883"), nil},
		{"server, every interface", server(p.ServerCert, p.ServerKey, ":8883"), nil},
		{"server, 0.0.0.0", server(p.ServerCert, p.ServerKey, "0.0.0.0:8883"), nil},
		{"server, [::]", server(p.ServerCert, p.ServerKey, "[::]:8883"), nil},
		{"server, host name", server(p.ServerCert, p.ServerKey, "localhost:8883"), nil},
		{"server, no listen address", server(p.ServerCert, p.ServerKey, ""), nil},
		{"server, IP its name resolves to", server(otherHostCert, otherHostKey, "10.9.8.7:8883"), nil},
		{"server, name lookup fails: benefit of the doubt", server(issueServerOnce(t, p.CA, "flaky", "flaky.example")), nil},
		{"device certificate as server certificate", server(d1Cert, d1Key, ":8883"),
			[]string{d1Cert, "not a server certificate", "a device's certificate", "pki server"}},
		{"controller certificate as server certificate", server(ctlCert, ctlKey, ":8883"),
			[]string{ctlCert, "not a server certificate", "controller's certificate"}},
		{"server certificate without subjectAltName", server(noSANCert, noSANKey, ":8883"),
			[]string{noSANCert, "no host in its subjectAltName", "--host"}},
		{"server certificate for another host name", server(otherHostCert, otherHostKey, "localhost:8883"),
			[]string{otherHostCert, "valid for broker.example, not for localhost", "--host localhost"}},
		{"server certificate for another IP", server(p.ServerCert, p.ServerKey, "10.9.8.7:8883"),
			[]string{p.ServerCert, "valid for localhost, 127.0.0.1, ::1, not for 10.9.8.7"}},
		{"server key from another pair", server(p.ServerCert, d1Key, ":8883"),
			[]string{d1Key, "does not belong to certificate " + p.ServerCert}},
		{"server certificate from another CA", server(foreignSrvCert, foreignSrvKey, ":8883"),
			[]string{foreignSrvCert, "testenv foreign CA", p.CAFile, "testenv CA"}},
		{"expired server certificate", server(expiredSrvCert, expiredSrvKey, ":8883"),
			[]string{expiredSrvCert, "expired on"}},
		{"server certificate not yet valid", at(server(p.ServerCert, p.ServerKey, ":8883"), now.Add(-72*time.Hour)),
			[]string{p.CAFile, "not valid before", "set the clock"}},
		{"server certificate as --ca", provisioning.CertCheck{CAFile: p.ServerCert, CertFile: p.ServerCert, KeyFile: p.ServerKey, Use: provisioning.UseServer},
			[]string{"CA certificate " + p.ServerCert, "is not a CA certificate but a server certificate", "pki init"}},
		{"CA certificate as server certificate", server(p.CAFile, filepath.Join(p.CA.Dir, provisioning.CAKeyFile), ":8883"),
			[]string{p.CAFile, "is a CA certificate", "pki server"}},

		// The controller's client certificate (controllerlite serve --broker).
		{"controller", controller(ctlCert, ctlKey), nil},
		{"controller-<name>", controller(eastCert, eastKey), nil},
		{"device certificate as controller certificate", controller(d1Cert, d1Key),
			[]string{d1Cert, `CN "d1"`, "pki controller"}},
		{"server certificate as controller certificate", controller(p.ServerCert, p.ServerKey),
			[]string{p.ServerCert, "not a client certificate", "pki controller"}},

		// A device's client certificate (thermostat run).
		{"device", device(p.CAFile, d1Cert, d1Key), nil},
		{"expired device certificate, clock not trusted", device(p.CAFile, expiredCert, expiredKey), nil},
		{"expired device certificate, clock trusted", at(device(p.CAFile, expiredCert, expiredKey), now),
			[]string{expiredCert, "expired on"}},
		{"--ca missing", device(missing, d1Cert, d1Key), []string{missing, "ca.crt"}},
		{"--ca not PEM", device(garbage, d1Cert, d1Key), []string{garbage, "no PEM CERTIFICATE"}},
		{"device certificate as --ca", device(d1Cert, d1Cert, d1Key),
			[]string{"CA certificate " + d1Cert, `"d1" is not a CA certificate but a device's certificate`}},
		{"another fleet's CA as --ca", device(p.ForeignCAFile, d1Cert, d1Key),
			[]string{d1Cert, `issued by "testenv CA"`, p.ForeignCAFile, "testenv foreign CA"}},
		{"device certificate from another CA", device(p.CAFile, foreignCert, foreignKey),
			[]string{foreignCert, `issued by "testenv foreign CA"`, p.CAFile}},
		{"device key from another pair", device(p.CAFile, d1Cert, foreignKey),
			[]string{foreignKey, "does not belong to certificate " + d1Cert}},
		{"key file is a certificate", device(p.CAFile, d1Cert, d1Cert), []string{"key " + d1Cert, "no PEM private key"}},
		{"certificate file is garbage", device(p.CAFile, garbage, d1Key), []string{"certificate " + garbage, "no PEM CERTIFICATE"}},
		{"server certificate as device certificate", device(p.CAFile, p.ServerCert, p.ServerKey),
			[]string{p.ServerCert, "not a client certificate but a server certificate", "pki device"}},
		{"controller certificate as device certificate", device(p.CAFile, ctlCert, ctlKey),
			[]string{ctlCert, "reserved"}},
		{"CN with '/'", device(p.CAFile, slashCert, slashKey), []string{slashCert, `invalid id "Bad/Id"`}},
		{"CN with capitals", device(p.CAFile, capsCert, capsKey), []string{capsCert, `invalid id "D1"`}},
		{"CN controller", device(p.CAFile, reservedCert, reservedKey), []string{reservedCert, "reserved"}},
		{"CN controller-x", device(p.CAFile, reserved2Cert, reserved2Key), []string{reserved2Cert, "reserved"}},
		{"two CNs", device(p.CAFile, twoCNCert, twoCNKey), []string{twoCNCert, "2 Common Names (controller, d3)"}},
		{"two CNs as controller", controller(twoCNCert, twoCNKey), []string{twoCNCert, "2 Common Names"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			leaf, err := provisioning.CheckCertificates(tt.check)
			if len(tt.want) == 0 {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if leaf == nil {
					t.Fatal("no certificate returned")
				}
				return
			}
			if err == nil {
				t.Fatalf("accepted, want an error with %q", tt.want)
			}
			t.Logf("refused: %v", err)
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q:\n%v", w, err)
				}
			}
		})
	}
}

// TestCheckCertificatesMissingFileIsNotExist: a missing file keeps its
// os error for errors.Is.
func TestCheckCertificatesMissingFileIsNotExist(t *testing.T) {
	p := testenv.NewPKI(t)
	cert, _ := p.Client(t, "d1")
	_, err := provisioning.CheckCertificates(provisioning.CertCheck{CAFile: p.CAFile, CertFile: cert,
		KeyFile: filepath.Join(t.TempDir(), "device.key"), Use: provisioning.UseDevice})
	if !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("error %v, want one wrapping os.ErrNotExist", err)
	}
}

// issueServer writes a server certificate for hosts issued by ca into a
// directory of its own.
func issueServer(t *testing.T, ca *provisioning.CA, name string, hosts ...string) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueServer(hosts, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// issueServerOnce is issueServer with a listen address on 10.9.8.7, for a
// table row.
func issueServerOnce(t *testing.T, ca *provisioning.CA, name string, hosts ...string) (certFile, keyFile, listen string) {
	certFile, keyFile = issueServer(t, ca, name, hosts...)
	return certFile, keyFile, "10.9.8.7:8883"
}
