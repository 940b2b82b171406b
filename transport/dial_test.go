package transport

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
)

// fillListenQueue opens plain TCP connections to a frozen server until the
// kernel stops answering SYNs because the server's accept queue is full,
// which is what a device meets when it reconnects to a broker that hangs.
// It returns the connections, to be closed by the caller.
func fillListenQueue(t *testing.T, addr string) []net.Conn {
	t.Helper()
	var conns []net.Conn
	for range 1000 {
		c, err := net.DialTimeout("tcp", addr, 300*time.Millisecond)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) || isTimeout(err) {
				return conns
			}
			t.Fatalf("filling the listen queue: %v", err)
		}
		conns = append(conns, c)
	}
	t.Fatalf("the listen queue of %s took %d connections and is still not full", addr, len(conns))
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// TestDialBoundedAgainstFullQueue: against a frozen Mosquitto whose listen
// queue is full, SYNs go unanswered. The client must give up each TCP
// connect after DialTimeout and try afresh, instead of waiting on the
// kernel's SYN retransmissions (1, 3, 7 s) for the whole connect timeout;
// and once the broker runs again, it must get in on one of those fresh
// attempts.
func TestDialBoundedAgainstFullQueue(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	m.Stop()
	t.Cleanup(m.Cont)
	junk := fillListenQueue(t, m.Addr())
	t.Cleanup(func() {
		for _, c := range junk {
			c.Close()
		}
	})

	cert, key := pki.Client(t, "d1")
	rec := newRecorder()
	const dial = 300 * time.Millisecond
	c := start(t, rec.options(Options{Broker: m.URL(), CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
		ConnectTimeout: 20 * time.Second, DialTimeout: dial,
		Backoff: Backoff{Min: 10 * time.Millisecond, Max: 50 * time.Millisecond}}))

	// Each attempt ends after DialTimeout: three of them long before one
	// unbounded connect would have given up.
	began := time.Now()
	deadline := began.Add(10 * time.Second)
	for c.Stats().Attempts < 3 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond) // polling a counter, bounded by the deadline
	}
	if s := c.Stats(); s.Attempts < 3 || s.Connects != 0 {
		t.Fatalf("stats %+v after %v: want 3 attempts and no connection while the queue is full", s, time.Since(began).Round(time.Millisecond))
	}
	if took := time.Since(began); took > 3*(dial+time.Second) {
		t.Fatalf("3 bounded attempts took %v", took)
	}

	for _, c := range junk {
		c.Close()
	}
	m.Cont()
	resumed := time.Now()
	rec.wait(t, "connect after the broker resumed", 15*time.Second, func() bool { return rec.connects == 1 })
	// The next fresh SYN comes within DialTimeout plus a backoff; the
	// kernel's own retransmission could have been 7 s away.
	if d := time.Since(resumed); d > 5*time.Second {
		t.Errorf("connected %v after the broker resumed", d.Round(time.Millisecond))
	}
}

func TestDialTimeoutDefaults(t *testing.T) {
	pki := testenv.NewPKI(t)
	cert, key := pki.Client(t, "d1")
	for _, tc := range []struct {
		dial, connect, want time.Duration
	}{
		{0, 0, DefaultDialTimeout},
		{2 * time.Second, 0, 2 * time.Second},
		{0, time.Second, time.Second}, // never longer than the whole attempt
	} {
		c, err := New(Options{Broker: "mqtts://localhost:1", CAFile: pki.CAFile, CertFile: cert, KeyFile: key,
			DialTimeout: tc.dial, ConnectTimeout: tc.connect})
		if err != nil {
			t.Fatal(err)
		}
		if c.opts.DialTimeout != tc.want {
			t.Errorf("DialTimeout %v, ConnectTimeout %v: got %v, want %v", tc.dial, tc.connect, c.opts.DialTimeout, tc.want)
		}
	}
}
