package broker

import (
	"fmt"

	"github.com/thermofleet/thermo/provisioning"
)

// ReloadCertificate reads the server certificate and key files again
// (serve does on SIGHUP): new connections get the new certificate,
// connections up keep theirs, so renewing the server certificate
// interrupts nobody. On error the certificate in use stays.
func (b *Broker) ReloadCertificate() error {
	pair, _, err := provisioning.LoadKeyPair(b.opts.CertFile, b.opts.KeyFile)
	if err != nil {
		return fmt.Errorf("broker: reload certificate: %w", err)
	}
	b.cert.Store(&pair)
	b.log.Info("server certificate reloaded", "file", b.opts.CertFile, "not_after", pair.Leaf.NotAfter)
	return nil
}
