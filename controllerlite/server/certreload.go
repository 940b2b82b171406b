package server

import (
	"crypto/tls"
	"fmt"
	"sync/atomic"
	"time"

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

// Reload reads the certificates again without a restart (serve does on
// SIGHUP), once they pass the checks of the start: the embedded broker's
// server certificate, the enrolment endpoint's, or with --broker the
// controller's client certificate (used from its next connection). Nothing
// is replaced when a check fails.
func (s *Server) Reload() error {
	if err := checkCertificates(s.cfg, time.Now()); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	if s.br != nil {
		if err := s.br.ReloadCertificate(); err != nil {
			return err
		}
	}
	if s.tc != nil {
		pair, _, err := provisioning.LoadKeyPair(s.cfg.CertFile, s.cfg.KeyFile)
		if err != nil {
			return fmt.Errorf("reload: %w", err)
		}
		s.tc.SetCertificate(pair)
	}
	for _, c := range s.certs {
		if err := c.reload(); err != nil {
			return err
		}
	}
	s.log.Info("certificates reloaded")
	return nil
}
