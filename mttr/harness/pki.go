package harness

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/thermofleet/thermo/provisioning"
)

// pki is the run's certificates: a CA, the broker's server certificate
// and a client certificate per device and for the controller.
type pki struct {
	ca                    *provisioning.CA
	dir                   string
	caFile                string
	serverCert, serverKey string
	// token is the bearer token of controllerlite's API, in tokenFile.
	token, tokenFile string
}

// newPKI issues a throwaway CA and a server certificate for the broker's
// host (and localhost) in dir.
func newPKI(dir, host string) (*pki, error) {
	ca, err := provisioning.InitCA(filepath.Join(dir, "ca"), provisioning.CAOptions{CommonName: "mttr CA", Force: true})
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	p := &pki{ca: ca, dir: dir, caFile: ca.CertFile(),
		serverCert: filepath.Join(dir, "server.crt"), serverKey: filepath.Join(dir, "server.key")}
	hosts := []string{"localhost", "127.0.0.1"}
	if host != "127.0.0.1" && host != "localhost" {
		hosts = append(hosts, host)
	}
	certPEM, keyPEM, err := ca.IssueServer(hosts, nil)
	if err != nil {
		return nil, fmt.Errorf("pki: server certificate: %w", err)
	}
	if err := provisioning.WriteCertKey(p.serverCert, p.serverKey, certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return nil, fmt.Errorf("pki: token: %w", err)
	}
	p.token, p.tokenFile = hex.EncodeToString(tok), filepath.Join(dir, "api.token")
	if err := os.WriteFile(p.tokenFile, []byte(p.token+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("pki: token: %w", err)
	}
	return p, nil
}

// loadPKI uses an existing CA (of an external broker) to issue client
// certificates into dir.
func loadPKI(caDir, dir string) (*pki, error) {
	ca, err := provisioning.LoadCA(caDir)
	if err != nil {
		return nil, fmt.Errorf("--external-pki: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	return &pki{ca: ca, dir: dir, caFile: ca.CertFile()}, nil
}

// client issues (once) the certificate of a client whose CN is id.
func (p *pki) client(id string) (certFile, keyFile string, err error) {
	dir := filepath.Join(p.dir, "clients")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	certFile, keyFile = filepath.Join(dir, id+".crt"), filepath.Join(dir, id+".key")
	if _, err := os.Stat(keyFile); err == nil {
		return certFile, keyFile, nil
	}
	certPEM, keyPEM, err := p.ca.IssueClient(id, nil)
	if err != nil {
		return "", "", fmt.Errorf("pki: certificate of %s: %w", id, err)
	}
	if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		return "", "", fmt.Errorf("pki: %w", err)
	}
	return certFile, keyFile, nil
}
