package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
)

// brokerSessions is the client's TLS session cache seen from one
// connection to one broker address. crypto/tls files a session under the
// server name only, so two brokers of one cluster with one name (a host's
// two ports, a name that resolves to either) would overwrite each other's
// session and a client failing over and back would never resume; filed
// under the address as well, each broker keeps its own. The cache itself
// stays one per certificate: SetCertificate replaces it, so a renewed
// certificate never resumes the old identity's session.
//
// It also keeps the ticket this connection offered and the last one the
// broker issued on it, for sameIssuer.
type brokerSessions struct {
	cache tls.ClientSessionCache
	addr  string // host:port of the broker

	mu        sync.Mutex
	offered   []byte // the ticket offered in the handshake
	offeredCS *tls.ClientSessionState
	offeredAt string // its key in the cache
	issued    []byte // the last ticket the broker issued on this connection
}

func (b *brokerSessions) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := b.cache.Get(b.addr + " " + key)
	if ok && cs != nil {
		if t, _, err := cs.ResumptionState(); err == nil {
			b.mu.Lock()
			b.offered, b.offeredCS, b.offeredAt = t, cs, b.addr+" "+key
			b.mu.Unlock()
		}
	}
	return cs, ok
}

func (b *brokerSessions) Put(key string, cs *tls.ClientSessionState) {
	b.cache.Put(b.addr+" "+key, cs)
	if cs == nil {
		return
	}
	if t, _, err := cs.ResumptionState(); err == nil {
		b.mu.Lock()
		b.issued = t
		b.mu.Unlock()
	}
}

// issuerLen is the length of the prefix of a ticket that names the broker
// process that issued it: the embedded broker's boot id (controllerlite/
// broker, tickets.go), and OpenSSL's (Mosquitto's) ticket key name, made
// at random when the process starts.
const issuerLen = 16

// sameIssuer reports whether the ticket this connection resumed and the
// one the broker issued on it begin alike: one broker process issued both.
// Call it once the broker has answered CONNECT (the new ticket comes right
// after the handshake, before any answer). The takeover policy needs it
// because resuming alone no longer tells the broker that closed us from a
// restarted one: the embedded broker keeps its ticket keys across
// restarts so that a returning fleet resumes. A broker whose tickets carry
// no such prefix (Go's own format begins with a random IV) never counts
// as the same process: its takeovers go unnoticed by this client, as
// with a broker that issues no tickets.
func (b *brokerSessions) sameIssuer() bool {
	if b == nil {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.offered) >= issuerLen && len(b.issued) >= issuerLen && bytes.Equal(b.offered[:issuerLen], b.issued[:issuerLen])
}

// handshakeFailed is told why the handshake failed. crypto/tls forgets
// the session it offered whenever a handshake that offered one fails; but
// when the broker said nothing (it dropped the connection unanswered: an
// overloaded broker whose handshake queue was full, a timeout, a reset)
// the session is as good as before, and forgetting it made every such
// retry a full handshake, the dearest moment to make one: 10,000 devices
// returning at once. It is put back then. A broker that answered with an
// alert (a refused certificate, a ticket it rejects) has the session
// forgotten, as crypto/tls wants.
func (b *brokerSessions) handshakeFailed(err error) {
	if b == nil || !unanswered(err) {
		return
	}
	b.mu.Lock()
	cs, key := b.offeredCS, b.offeredAt
	b.mu.Unlock()
	if cs != nil {
		b.cache.Put(key, cs)
	}
}

// unanswered reports whether err ended a handshake without a word from
// the broker: a timeout, the connection closed or reset.
func unanswered(err error) bool {
	var alert tls.AlertError
	if errors.As(err, &alert) {
		return false
	}
	var ne net.Error
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) ||
		errors.Is(err, os.ErrDeadlineExceeded) || errors.Is(err, syscall.ECONNRESET) ||
		errors.As(err, &ne) && ne.Timeout()
}

var _ tls.ClientSessionCache = (*brokerSessions)(nil)
