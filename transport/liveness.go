package transport

import (
	"errors"
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
