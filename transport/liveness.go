package transport

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// pingreq is the MQTT PINGREQ packet. The broker answers it with a PINGRESP
// that paho reads and discards as it does its own.
var pingreq = []byte{0xC0, 0x00}

// errSilent is what reads return once the monitor has condemned the
// connection. paho treats the error of a closed socket as a disconnect it
// made itself and reports nothing, so a read must fail with its own error.
var errSilent = errors.New("broker silent for a whole keep-alive: connection dropped")

// liveConn records when the broker last sent a byte, so a monitor can tell a
// silent (hung or unreachable) broker from an idle one.
type liveConn struct {
	net.Conn
	lastRead atomic.Int64 // unix nanoseconds
	dead     atomic.Bool
	// established is set once the broker has acknowledged CONNECT; until
	// then nothing else reads the connection.
	established atomic.Bool
	// resumed: the TLS handshake resumed an earlier session with this
	// broker; sessions, with the tickets, tells whether the same broker
	// process issued it (see the takeover policy).
	resumed  bool
	sessions *brokerSessions
	closed   chan struct{}
	once     sync.Once
}

func newLiveConn(c net.Conn, now time.Time) *liveConn {
	l := &liveConn{Conn: c, closed: make(chan struct{})}
	l.lastRead.Store(now.UnixNano())
	return l
}

func (l *liveConn) Read(p []byte) (int, error) {
	n, err := l.Conn.Read(p)
	if n > 0 {
		l.lastRead.Store(time.Now().UnixNano())
	}
	if err != nil && l.dead.Load() {
		err = errSilent
	}
	return n, err
}

// Write writes p. A TLS 1.3 broker that refuses this client's certificate
// says so with an alert after the client's side of the handshake is done,
// and closes: CONNECT, written next, may meet the closed socket and fail
// with a reset while the alert that says why waits unread. So a write that
// fails before the CONNACK reads that alert, if there is one, and returns
// it with the write's error.
func (l *liveConn) Write(p []byte) (int, error) {
	n, err := l.Conn.Write(p)
	if err != nil && !l.established.Load() {
		if refused := l.refusal(); refused != nil {
			err = fmt.Errorf("%w (the broker had refused the handshake: %w)", err, refused)
		}
	}
	return n, err
}

// refusalWait bounds the read of an alert already received.
const refusalWait = 100 * time.Millisecond

// refusal returns the TLS alert the broker sent before it closed the
// connection, or nil.
func (l *liveConn) refusal() error {
	if err := l.Conn.SetReadDeadline(time.Now().Add(refusalWait)); err != nil {
		return nil
	}
	_, err := l.Conn.Read(make([]byte, 1))
	if remoteAlert(err) != nil {
		return err
	}
	return nil
}

func (l *liveConn) Close() error {
	l.once.Do(func() { close(l.closed) })
	return l.Conn.Close()
}

// monitor probes the broker once it has been silent for keepAlive/2 and
// closes the connection once it has been silent for keepAlive, which paho
// then reports as a lost connection. tls.Conn serialises whole Writes and
// paho writes each packet in one Write, so the probe never splits a packet.
// onDead is called with the silence that condemned the connection.
func (l *liveConn) monitor(keepAlive time.Duration, onDead func(silent time.Duration)) {
	tick := min(max(keepAlive/20, 20*time.Millisecond), time.Second)
	t := time.NewTicker(tick)
	defer t.Stop()
	var probed int64 // lastRead value when the probe went out
	for {
		select {
		case <-l.closed:
			return
		case now := <-t.C:
			last := l.lastRead.Load()
			silent := now.Sub(time.Unix(0, last))
			switch {
			case silent >= keepAlive:
				onDead(silent)
				l.dead.Store(true)
				l.Close()
				return
			case silent >= keepAlive/2 && probed != last:
				probed = last
				// In its own goroutine: against a hung broker a write can
				// block on a full socket buffer, and the monitor must still
				// close the connection on time.
				go func() {
					if _, err := l.Conn.Write(pingreq); err != nil {
						l.Close()
					}
				}()
			}
		}
	}
}
