package broker

import mqtt "github.com/mochi-mqtt/server/v2"

// Stats are the embedded broker's own figures, for metrics: what mochi
// counts in its server.Info.
type Stats struct {
	// ClientsConnected are the network clients connected now (the
	// controller's in-process link is not one).
	ClientsConnected int64
	// Retained is how many retained messages the broker holds under the
	// topic root (not its own $SYS topics).
	Retained int64
	// MessagesReceived and MessagesSent count PUBLISH packets from and to
	// network clients since start; MessagesDropped those dropped because
	// a client was too slow to take them.
	MessagesReceived, MessagesSent, MessagesDropped int64
	// TLSHandshakes counts the network clients' completed TLS handshakes
	// since start, TLSResumed those of them that resumed an earlier
	// session (with the ticket keys kept in the data directory, a device
	// returning to a restarted broker does) rather than exchanging
	// certificates.
	TLSHandshakes, TLSResumed int64
}

// Stats returns the broker's figures now.
func (b *Broker) Stats() Stats {
	i := b.srv.Info.Clone()
	// Not i.Retained: mochi updates it only when a client retains a
	// message, and counts its $SYS topics in it.
	retained := b.srv.Topics.Retained.Len() - len(b.srv.Topics.Messages(mqtt.SysPrefix+"/#"))
	return Stats{
		ClientsConnected: i.ClientsConnected,
		Retained:         int64(max(retained, 0)),
		MessagesReceived: i.MessagesReceived,
		MessagesSent:     i.MessagesSent,
		MessagesDropped:  i.MessagesDropped,
		TLSHandshakes:    b.handshakes.all.Load(),
		TLSResumed:       b.handshakes.resumed.Load(),
	}
}
