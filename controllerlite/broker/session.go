package broker

import (
	"log/slog"
	"net"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// takeoverWait bounds how long a new connection waits for the previous
// connection of its client id to be torn down. Closing a TLS connection
// whose peer reads nothing can take 5 s (crypto/tls's close_notify
// deadline); anything longer means the old connection's goroutine is
// stuck, and the new one goes ahead rather than hang with it.
const takeoverWait = 10 * time.Second

// sessionGate keeps a new connection's session from starting until mochi
// has completely torn down the previous connection of the same client id.
//
// mochi v2.7.9 (server.go, attachClient) cleans up after a connection of a
// clean-session client ends by unsubscribing its filters and deleting its
// client, both by client id, and only skips that when the connection was
// taken over. A new connection of the same id that starts meanwhile (a
// device reconnecting within milliseconds of losing its connection, or a
// takeover while the old connection is still open) races with that
// cleanup: the old connection can delete the new client from the server's
// client list, and remove the subscriptions it has just made from the
// topic index. The new session's SUBSCRIBE is acknowledged, but nothing is
// ever delivered to it. The old connection's will could likewise be
// published after the new connection's first messages.
//
// The gate waits in OnSessionEstablish, which mochi calls before it looks
// for an existing session of the id. If the previous connection is still
// open it is disconnected first, as mochi would do a moment later. Once the
// previous connection's EstablishConnection has returned, its cleanup is
// over, and mochi sees it as it sees any ended connection: a clean session
// is gone, a persistent one is inherited by the new connection.
type sessionGate struct {
	log *slog.Logger
	// disconnect ends an open connection that a newer one replaces.
	disconnect func(*mqtt.Client)

	mu     sync.Mutex
	byConn map[net.Conn]*attachment // connections inside EstablishConnection
	byID   map[string]*attachment   // the newest session of each client id
}

// attachment is one network connection, from the listener's hand-off to
// mochi until mochi is done with it.
type attachment struct {
	cl   *mqtt.Client  // set once its session is being established
	done chan struct{} // closed when mochi is done with the connection
}

func newSessionGate(log *slog.Logger, disconnect func(*mqtt.Client)) *sessionGate {
	return &sessionGate{
		log:        log,
		disconnect: disconnect,
		byConn:     make(map[net.Conn]*attachment),
		byID:       make(map[string]*attachment),
	}
}

// attach wraps mochi's EstablishConnection, recording when it returns:
// mochi runs a connection's whole life, cleanup included, inside it.
func (g *sessionGate) attach(establish func(listener string, c net.Conn) error) func(string, net.Conn) error {
	return func(listener string, c net.Conn) error {
		a := &attachment{done: make(chan struct{})}
		g.mu.Lock()
		g.byConn[c] = a
		g.mu.Unlock()
		defer func() {
			g.mu.Lock()
			delete(g.byConn, c)
			if a.cl != nil && g.byID[a.cl.ID] == a {
				delete(g.byID, a.cl.ID)
			}
			g.mu.Unlock()
			close(a.done)
		}()
		return establish(listener, c)
	}
}

// establish makes cl the newest session of its client id and waits until
// mochi is done with the previous connection of that id, disconnecting it
// if it is still open. It is called from OnSessionEstablish, after cl has
// been authenticated: a refused client never disturbs the session it
// claims.
func (g *sessionGate) establish(cl *mqtt.Client) {
	g.mu.Lock()
	a := g.byConn[cl.Net.Conn]
	if a == nil { // not one of our listener's connections
		g.mu.Unlock()
		return
	}
	a.cl = cl
	prev := g.byID[cl.ID]
	g.byID[cl.ID] = a
	g.mu.Unlock()
	if prev == nil {
		return
	}

	select {
	case <-prev.done:
		return
	default:
	}
	// Still running: open, or in the middle of its cleanup. Closing it
	// twice is harmless.
	g.disconnect(prev.cl)
	timer := time.NewTimer(takeoverWait)
	defer timer.Stop()
	select {
	case <-prev.done:
		g.log.Debug("previous connection ended before the new session", "client", cl.ID, "old_remote", prev.cl.Net.Remote, "new_remote", cl.Net.Remote)
	case <-timer.C:
		g.log.Error("previous connection still not torn down: starting the new session anyway", "client", cl.ID, "old_remote", prev.cl.Net.Remote, "waited", takeoverWait)
	}
}

// disconnectTakenOver is sessionGate's disconnect for srv.
func disconnectTakenOver(srv *mqtt.Server) func(*mqtt.Client) {
	return func(cl *mqtt.Client) {
		_ = srv.DisconnectClient(cl, packets.ErrSessionTakenOver)
	}
}
