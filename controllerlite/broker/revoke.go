package broker

import (
	"crypto/tls"

	"github.com/mochi-mqtt/server/v2/packets"
)

// CutRevoked disconnects at once every network client whose certificate
// Options.Revoked now says is revoked (its will goes out, as for any
// connection the broker ends); it returns their ids. The server calls it
// whenever the revocation list changes.
func (b *Broker) CutRevoked() []string {
	b.mu.Lock()
	running := b.started && !b.closed
	b.mu.Unlock()
	if !running || b.auth.revoked == nil {
		return nil
	}
	var cut []string
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Inline || cl.Closed() {
			continue
		}
		tc, ok := cl.Net.Conn.(*tls.Conn)
		if !ok {
			continue
		}
		if reason := b.auth.isRevoked(tc); reason != "" {
			b.log.Warn("revoked certificate: client disconnected", "client", cl.ID, "remote", cl.Net.Remote, "reason", reason)
			_ = b.srv.DisconnectClient(cl, packets.ErrNotAuthorized)
			cl.Stop(packets.ErrNotAuthorized)
			cut = append(cut, cl.ID)
		}
	}
	return cut
}
