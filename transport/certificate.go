package transport

import (
	"crypto/tls"
	"errors"
)

// ErrReconnect is the cause a connection ended by Reconnect is lost with.
var ErrReconnect = errors.New("reconnecting with a new certificate")

// SetCertificate makes pair the client certificate of every connection
// from now on (a renewed certificate); the connection up now keeps the
// old one until Reconnect. TLS sessions of the old certificate are
// forgotten: a resumed session would present the old identity again. A
// client of a plain mqtt:// broker has no certificate: nothing changes.
func (c *Client) SetCertificate(pair tls.Certificate) {
	old := c.tls.Load()
	if old == nil {
		return // plain MQTT: no certificate to replace
	}
	conf := old.Clone()
	conf.Certificates = []tls.Certificate{pair}
	conf.ClientSessionCache = tls.NewLRUClientSessionCache(len(c.brokers))
	c.tls.Store(conf)
}

// Reconnect ends the connection up now cleanly (no will: the broker
// hears a DISCONNECT) so that Run connects again at once, with the
// certificate SetCertificate gave. It does nothing while not connected.
func (c *Client) Reconnect() {
	c.mu.Lock()
	pc, lost := c.pc, c.lostCh
	c.mu.Unlock()
	if pc == nil || lost == nil || !c.Connected() {
		return
	}
	pc.Disconnect(250)
	select {
	case lost <- ErrReconnect:
	default:
	}
}
