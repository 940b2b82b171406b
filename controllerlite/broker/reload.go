package broker

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/thermofleet/thermo/provisioning"
)

// setupTLS makes conf, the listener's configuration, hand every handshake
// the configuration in b.handshake (the CAs client certificates must chain
// to, which ReloadCertificate replaces) and keep the session-ticket keys
// b.tickets sets on conf itself. Go uses the keys of the configuration
// GetConfigForClient returns only when that one has keys of its own: ours
// never do, so rotating them on conf reaches every handshake.
func (b *Broker) setupTLS(conf *tls.Config) error {
	conf.VerifyConnection = b.auth.verifyResumed
	h := conf.Clone()
	if err := markTickets(h, conf); err != nil {
		return err
	}
	b.handshake.Store(h)
	conf.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) { return b.handshake.Load(), nil }
	b.tickets = newTicketKeys(b.opts.DataDir, b.log, conf.SetSessionTicketKeys)
	return nil
}

// ReloadCertificate reads the CA file, the server certificate and its key
// again (serve does on SIGHUP): new connections get the new certificate
// and are verified against the new CAs, connections up keep theirs, so
// renewing the server certificate interrupts nobody. The TLS
// session-ticket keys are replaced too: no session from before the reload
// resumes, so a certificate of a CA taken out of the file cannot come back
// through an old ticket (Go would refuse its chain anyway), and a key file
// that may have been read is retired. Every device's next connection is
// then a full handshake. On error everything in use stays.
func (b *Broker) ReloadCertificate() error {
	pair, _, err := provisioning.LoadKeyPair(b.opts.CertFile, b.opts.KeyFile)
	if err != nil {
		return fmt.Errorf("broker: reload certificate: %w", err)
	}
	roots, err := readCerts(b.opts.CAFile)
	if err != nil {
		return fmt.Errorf("broker: reload CA: %w", err)
	}
	pool := x509.NewCertPool()
	for _, ca := range roots {
		pool.AddCert(ca)
	}
	conf := b.handshake.Load().Clone()
	conf.ClientCAs = pool
	b.handshake.Store(conf)
	b.identity.refusals.setRoots(roots)
	b.cert.Store(&pair)
	if err := b.tickets.renew(); err != nil {
		// The old keys stay: sessions from before resume, each still
		// checked against the new CAs by Go.
		b.log.Error("TLS session-ticket keys not renewed after the reload", "error", err)
	}
	b.log.Info("server certificate and CA reloaded; TLS session-ticket keys renewed (each device's next connection is a full handshake)",
		"file", b.opts.CertFile, "not_after", pair.Leaf.NotAfter, "ca_file", b.opts.CAFile, "cas", len(roots))
	return nil
}
