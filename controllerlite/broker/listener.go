package broker

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/listeners"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thermofleet/thermo/protocol"
)

// tlsListener is a mochi listener over a bound TCP socket. Unlike mochi's
// own listeners it completes the TLS handshake itself (so a refused
// certificate is logged with its reason before MQTT starts) and tracks the
// connection goroutines it starts, so Close can wait for them before the
// store is closed. A connection must get a handshake slot within
// admitTimeout of being accepted, then complete its TLS handshake and send
// CONNECT within connectTimeout.
type tlsListener struct {
	id             string
	raw            net.Listener
	conf           *tls.Config
	connectTimeout time.Duration
	admitTimeout   time.Duration
	log            *slog.Logger

	ctx    context.Context // canceled by shutdown: ends pending handshakes
	cancel context.CancelFunc

	mu     sync.Mutex
	closed bool
	conns  sync.WaitGroup

	// handshakeFailed reports a failed TLS handshake; set before Serve.
	handshakeFailed func(remote string, err error)

	// slots admits handshakes: at most cap(slots) run at once, the others
	// wait for a slot in the order they were accepted (see admit).
	slots chan struct{}

	// counts, if set, counts the completed handshakes (Stats).
	counts *handshakeCounts
}

// handshakeCounts are the completed TLS handshakes of a listener, and
// those of them that resumed an earlier session.
type handshakeCounts struct {
	all, resumed atomic.Int64
}

// maxHandshakes bounds the TLS handshakes running at once. A fleet coming
// back to a restarted broker arrives as thousands of connections within a
// second; all handshaking at once, each gets a sliver of the CPU and every
// one of them finishes late, some after the client's connect timeout,
// which then retries and costs another handshake. Admitted a bounded
// number at a time (the rest waiting, accepted, in a queue rather than in
// the kernel's backlog where a full queue drops SYNs), they finish in the
// order they came. A handshake mostly waits for its peer (two round trips
// to a busy client), so the bound is well above the cores: at 4 per core
// (8 here) 1,000 returning devices were admitted at ~280 a second, half
// the rate without a bound; at 64 per core it no longer limited them.
func maxHandshakes() int { return max(128, 64*runtime.GOMAXPROCS(0)) }

func newTLSListener(id string, raw net.Listener, conf *tls.Config, connectTimeout, admitTimeout time.Duration, log *slog.Logger) *tlsListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &tlsListener{id: id, raw: raw, conf: conf, connectTimeout: connectTimeout, admitTimeout: admitTimeout, log: log, ctx: ctx, cancel: cancel,
		slots: make(chan struct{}, maxHandshakes())}
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

// handle runs one connection: its turn for a handshake slot, the TLS
// handshake, then mochi. One deadline, set when the connection gets its
// slot, covers the handshake and the wait for CONNECT: mochi v2.7.9 reads
// CONNECT with none of its own and replaces the deadline only after it has
// read CONNECT (with the client's keep-alive), so a peer that connects and
// says nothing, or stops halfway, is closed after connectTimeout. The wait
// for the slot is not counted in it: when it was, under a stampede the
// connections at the back of the queue got their slot with their
// deadline spent, or none before it, and came back to queue again.
func (l *tlsListener) handle(conn net.Conn, establish listeners.EstablishFn) {
	if !l.admit(conn) {
		conn.Close()
		return
	}
	if err := conn.SetDeadline(time.Now().Add(l.connectTimeout)); err != nil {
		<-l.slots
		l.log.Warn("connection dropped: cannot set its connect deadline", "remote", conn.RemoteAddr().String(), "error", err)
		conn.Close()
		return
	}
	tc := tls.Server(conn, l.conf)
	err := tc.HandshakeContext(l.ctx) // l.ctx ends pending handshakes at shutdown
	<-l.slots
	if err == nil && l.isClosed() {
		tc.Close()
		return
	}
	if err != nil {
		l.handshakeFailed(conn.RemoteAddr().String(), err)
		tc.Close()
		return
	}
	if l.counts != nil {
		l.counts.all.Add(1)
		if tc.ConnectionState().DidResume {
			l.counts.resumed.Add(1)
		}
	}
	err = establish(l.id, tc)
	switch {
	case err == nil:
	case errors.Is(err, packets.ErrPacketTooLarge):
		l.log.Warn("connection closed: packet over the size limit", "remote", conn.RemoteAddr().String(), "limit", protocol.MaxPacketSize)
	case errors.Is(err, os.ErrDeadlineExceeded) && strings.HasPrefix(err.Error(), connectReadError):
		l.log.Warn("connection closed: no CONNECT within the connect timeout", "remote", conn.RemoteAddr().String(), "timeout", l.connectTimeout)
	default:
		l.log.Debug("client connection ended", "remote", conn.RemoteAddr().String(), "error", err)
	}
}

// admit waits for a handshake slot, at most admitTimeout (blocked senders
// on a channel are served first come, first served). It reports false when
// the time passed first or the listener is shutting down; the caller
// closes the connection.
func (l *tlsListener) admit(conn net.Conn) bool {
	select {
	case l.slots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(l.admitTimeout)
	defer t.Stop()
	select {
	case l.slots <- struct{}{}:
		return true
	case <-t.C:
		l.log.Warn("connection dropped: no handshake slot within the admit timeout (too many connecting at once)", "remote", conn.RemoteAddr().String(), "timeout", l.admitTimeout, "slots", cap(l.slots))
		return false
	case <-l.ctx.Done():
		return false
	}
}

// connectReadError begins the error mochi v2.7.9 returns when it could not
// read a connection's CONNECT (server.go, attachClient); later errors
// (keep-alive expiry and the like) are logged with the client's disconnect.
const connectReadError = "read connection:"

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
