// Package testenv holds test helpers shared by the module's tests: a
// throwaway PKI in t.TempDir() (plus an unrelated "foreign" CA), free
// loopback ports, a real Mosquitto broker started with the configuration
// `controllerlite pki mosquitto` generates, and a small paho client that
// collects messages. Import it only from _test.go files.
//
// Every helper takes a testing.TB, fails the test on setup errors and
// cleans up in t.Cleanup, so a test reads as its scenario.
package testenv

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/provisioning"
)

// ServerHosts are the names the test server certificate is valid for.
var ServerHosts = []string{"localhost", "127.0.0.1", "::1"}

// PKI is a CA in a temporary directory with a server certificate for
// ServerHosts, client certificates issued on demand, and a second,
// unrelated CA for "wrong CA" tests.
type PKI struct {
	// Dir holds every file of this PKI.
	Dir string
	// CA is the fleet CA; use it to issue anything the helpers do not.
	CA *provisioning.CA
	// CAFile is the fleet CA certificate (what brokers and clients trust).
	CAFile string
	// ServerCert and ServerKey are the broker's credentials, valid for
	// localhost, 127.0.0.1 and ::1.
	ServerCert, ServerKey string
	// Foreign is an unrelated CA that nothing trusts; ForeignCAFile its certificate.
	Foreign       *provisioning.CA
	ForeignCAFile string

	mu      sync.Mutex
	clients map[string][2]string
}

// NewPKI issues a fresh PKI in t.TempDir().
func NewPKI(t testing.TB) *PKI {
	t.Helper()
	dir := t.TempDir()
	ca, err := provisioning.InitCA(filepath.Join(dir, "ca"), provisioning.CAOptions{CommonName: "testenv CA"})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	foreign, err := provisioning.InitCA(filepath.Join(dir, "foreign"), provisioning.CAOptions{CommonName: "testenv foreign CA"})
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := &PKI{
		Dir:           dir,
		CA:            ca,
		CAFile:        ca.CertFile(),
		ServerCert:    filepath.Join(dir, "server.crt"),
		ServerKey:     filepath.Join(dir, "server.key"),
		Foreign:       foreign,
		ForeignCAFile: foreign.CertFile(),
		clients:       map[string][2]string{},
	}
	certPEM, keyPEM, err := ca.IssueServer(ServerHosts, nil)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := provisioning.WriteCertKey(p.ServerCert, p.ServerKey, certPEM, keyPEM); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return p
}

// Client returns the certificate and key files of a client certificate
// with CN id, issued by the fleet CA: a device id or "controller". The same
// id gives the same files.
func (p *PKI) Client(t testing.TB, id string) (certFile, keyFile string) {
	t.Helper()
	return p.client(t, "client", p.CA, id, nil)
}

// ForeignClient is Client with a certificate issued by the foreign CA: a
// broker must refuse it.
func (p *PKI) ForeignClient(t testing.TB, id string) (certFile, keyFile string) {
	t.Helper()
	return p.client(t, "foreign", p.Foreign, id, nil)
}

// ExpiredClient returns a client certificate with CN id, issued by the
// fleet CA, that expired an hour ago.
func (p *PKI) ExpiredClient(t testing.TB, id string) (certFile, keyFile string) {
	t.Helper()
	return p.client(t, "expired", p.CA, id, &provisioning.IssueOptions{
		NotBefore: time.Now().Add(-48 * time.Hour),
		Validity:  47 * time.Hour,
	})
}

func (p *PKI) client(t testing.TB, kind string, ca *provisioning.CA, id string, opts *provisioning.IssueOptions) (string, string) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	key := kind + "/" + id
	if f, ok := p.clients[key]; ok {
		return f[0], f[1]
	}
	certPEM, keyPEM, err := ca.IssueClient(id, opts)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	certFile, keyFile := p.write(t, kind, id, certPEM, keyPEM)
	p.clients[key] = [2]string{certFile, keyFile}
	return certFile, keyFile
}

// ClientWithCN issues a client certificate from the fleet CA with any
// Common Name, unchecked (empty, "Bad/Id", "+", "controller"...), for tests
// of how a broker treats identities provisioning would never issue to a
// device.
func (p *PKI) ClientWithCN(t testing.TB, cn string) (certFile, keyFile string) {
	t.Helper()
	return p.Unchecked(t, &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
}

// Unchecked issues a certificate from the fleet CA for tmpl as it is
// (subject, extended key usage, subjectAltNames, validity), with a new key,
// for certificates provisioning would refuse to make: a server certificate
// without subjectAltNames, a subject with two Common Names... The serial
// number, key usage and basic constraints are set, and the validity when
// tmpl leaves it zero.
func (p *PKI) Unchecked(t testing.TB, tmpl *x509.Certificate) (certFile, keyFile string) {
	t.Helper()
	caKeyPEM, err := os.ReadFile(filepath.Join(p.CA.Dir, provisioning.CAKeyFile))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	caPair, err := tls.X509KeyPair(p.CA.CertPEM, caKeyPEM)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cp := *tmpl // the caller's template stays as it was
	tmpl = &cp
	tmpl.SerialNumber = serial
	if tmpl.NotBefore.IsZero() {
		tmpl.NotBefore = time.Now().Add(-time.Hour)
	}
	if tmpl.NotAfter.IsZero() {
		tmpl.NotAfter = time.Now().Add(24 * time.Hour)
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.CA.Cert, key.Public(), caPair.PrivateKey)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
	return p.write(t, "raw", "", certPEM, keyPEM)
}

// write stores a pair under Dir/kind/ with a unique name.
func (p *PKI) write(t testing.TB, kind, id string, certPEM, keyPEM []byte) (certFile, keyFile string) {
	t.Helper()
	dir := filepath.Join(p.Dir, kind)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if id == "" {
		f, err := os.MkdirTemp(dir, "cn")
		if err != nil {
			t.Fatalf("testenv: %v", err)
		}
		dir, id = f, "client"
	}
	certFile, keyFile = filepath.Join(dir, id+".crt"), filepath.Join(dir, id+".key")
	if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return certFile, keyFile
}

// ClientTLS returns a client TLS configuration presenting certFile/keyFile
// and trusting only the fleet CA, with ServerName "localhost".
func (p *PKI) ClientTLS(t testing.TB, certFile, keyFile string) *tls.Config {
	t.Helper()
	cfg, err := provisioning.LoadClientTLS(p.CAFile, certFile, keyFile)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	cfg.ServerName = "localhost"
	return cfg
}

// ServerTLS returns the broker side: the server certificate, and client
// certificates required and verified against the fleet CA.
func (p *PKI) ServerTLS(t testing.TB) *tls.Config {
	t.Helper()
	cfg, err := provisioning.LoadServerTLS(p.CAFile, p.ServerCert, p.ServerKey)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return cfg
}
