package broker

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
)

// handshakeTimeout bounds a TLS handshake, so a peer that connects and
// says nothing does not hold a goroutine forever.
const handshakeTimeout = 10 * time.Second

// tlsListener is a mochi listener over a bound TCP socket. Unlike mochi's
// own listeners it completes the TLS handshake itself (so a refused
// certificate is logged with its reason before MQTT starts) and tracks the
// connection goroutines it starts, so Close can wait for them before the
// store is closed.
type tlsListener struct {
	id   string
	raw  net.Listener
	conf *tls.Config
	log  *slog.Logger

	ctx    context.Context // canceled by shutdown: ends pending handshakes
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  sync.WaitGroup
}

func newTLSListener(id string, raw net.Listener, conf *tls.Config, log *slog.Logger) *tlsListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &tlsListener{id: id, raw: raw, conf: conf, log: log, ctx: ctx, cancel: cancel}
}

// ID, Address, Protocol, Init, Serve and Close implement listeners.Listener.

func (l *tlsListener) ID() string              { return l.id }
func (l *tlsListener) Address() string         { return l.raw.Addr().String() }
func (l *tlsListener) Protocol() string        { return "mqtts" }
func (l *tlsListener) Init(*slog.Logger) error { return nil }
func (l *tlsListener) Addr() net.Addr          { return l.raw.Addr() }

func (l *tlsListener) Serve(establish listeners.EstablishFn) {
	backoff := 5 * time.Millisecond
	for {
		conn, err := l.raw.Accept()
		if err != nil {
			if l.isClosed() {
				return
			}
			// Out of file descriptors and the like: wait and retry
			// rather than spin or give up on every future client.
			l.log.Error("broker accept", "error", err, "retry_in", backoff)
			time.Sleep(backoff)
			backoff = min(2*backoff, time.Second)
			continue
		}
		backoff = 5 * time.Millisecond
		l.mu.Lock()
		if l.closed {
			l.mu.Unlock()
			conn.Close()
			return
		}
		l.conns.Add(1)
		l.mu.Unlock()
		go func() {
			defer l.conns.Done()
			l.handle(conn, establish)
		}()
	}
}

func (l *tlsListener) handle(conn net.Conn, establish listeners.EstablishFn) {
	tc := tls.Server(conn, l.conf)
	ctx, cancel := context.WithTimeout(l.ctx, handshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err == nil && l.isClosed() {
		tc.Close()
		return
	}
	if err != nil {
		l.log.Warn("connection refused: TLS handshake failed", "remote", conn.RemoteAddr().String(), "error", err)
		tc.Close()
		return
	}
	if err := establish(l.id, tc); err != nil {
		l.log.Debug("client connection ended", "remote", conn.RemoteAddr().String(), "error", err)
	}
}

// Close stops accepting and disconnects the listener's clients.
func (l *tlsListener) Close(closeClients listeners.CloseFn) {
	l.shutdown()
	closeClients(l.id)
}

// shutdown stops accepting new connections.
func (l *tlsListener) shutdown() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.closed {
		l.closed = true
		l.cancel()
		l.raw.Close()
	}
}

func (l *tlsListener) isClosed() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.closed
}

// wait waits up to d for every connection goroutine to end; it reports
// whether they all did.
func (l *tlsListener) wait(d time.Duration) bool {
	done := make(chan struct{})
	go func() {
		l.conns.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-time.After(d):
		return false
	}
}

var _ listeners.Listener = (*tlsListener)(nil)
