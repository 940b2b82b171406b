package server

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"

	"github.com/thermofleet/thermo/provisioning"
)

// reloadableCert is a server certificate that can be replaced while the
// listeners run (serve reloads it on SIGHUP): new handshakes get the new
// one, connections up keep theirs.
type reloadableCert struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]
}

func newReloadableCert(certFile, keyFile string) (*reloadableCert, error) {
	c := &reloadableCert{certFile: certFile, keyFile: keyFile}
	if err := c.reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// reload reads the files again; on error the certificate in use stays.
func (c *reloadableCert) reload() error {
	pair, _, err := provisioning.LoadKeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("reload server certificate: %w", err)
	}
	c.cur.Store(&pair)
	return nil
}

// get is tls.Config.GetCertificate.
func (c *reloadableCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}
