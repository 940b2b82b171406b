package transport

import "crypto/tls"

// brokerSessions is the client's TLS session cache seen from one broker
// address. crypto/tls files a session under the server name only, so two
// brokers of one cluster with one name (a host's two ports, a name that
// resolves to either) would overwrite each other's session and a client
// failing over and back would never resume; filed under the address as
// well, each broker keeps its own. The cache itself stays one per
// certificate: SetCertificate replaces it, so a renewed certificate never
// resumes the old identity's session.
type brokerSessions struct {
	cache tls.ClientSessionCache
	addr  string // host:port of the broker
}

func (b brokerSessions) Get(key string) (*tls.ClientSessionState, bool) {
	return b.cache.Get(b.addr + " " + key)
}

func (b brokerSessions) Put(key string, cs *tls.ClientSessionState) {
	b.cache.Put(b.addr+" "+key, cs)
}

var _ tls.ClientSessionCache = brokerSessions{}
