package transport

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"sync"
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

// fakeDials plays TCP connects: each call takes the next behaviour.
type fakeDials struct {
	mu    sync.Mutex
	plays []func(ctx context.Context) (net.Conn, error)
	calls int
}

func (f *fakeDials) dial(ctx context.Context, _, _ string) (net.Conn, error) {
	f.mu.Lock()
	play := f.plays[min(f.calls, len(f.plays)-1)]
	f.calls++
	f.mu.Unlock()
	return play(ctx)
}

func (f *fakeDials) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// lost is a SYN nobody answers: the connect waits for its context.
func lost(ctx context.Context) (net.Conn, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// answered connects at once; the peer end is kept to see it closed.
func answered(peers chan<- net.Conn) func(context.Context) (net.Conn, error) {
	return func(context.Context) (net.Conn, error) {
		a, b := net.Pipe()
		peers <- b
		return a, nil
	}
}

func TestDialStagger(t *testing.T) {
	refused := errors.New("connection refused")
	cases := []struct {
		name    string
		stagger time.Duration
		plays   func(peers chan<- net.Conn) []func(context.Context) (net.Conn, error)
		wantErr string
		calls   [2]int // at least, at most
	}{
		{"lost SYN, no stagger: no answer within DialTimeout", 0,
			func(chan<- net.Conn) []func(context.Context) (net.Conn, error) {
				return []func(context.Context) (net.Conn, error){lost}
			}, "no answer in", [2]int{1, 1}},
		{"lost SYN, then a fresh connect gets through", 20 * time.Millisecond,
			func(p chan<- net.Conn) []func(context.Context) (net.Conn, error) {
				return []func(context.Context) (net.Conn, error){lost, lost, answered(p)}
			}, "", [2]int{3, 3}},
		{"refused: the host answered, no more connects", 20 * time.Millisecond,
			func(chan<- net.Conn) []func(context.Context) (net.Conn, error) {
				return []func(context.Context) (net.Conn, error){func(context.Context) (net.Conn, error) { return nil, refused }}
			}, "connection refused", [2]int{1, 1}},
		{"every SYN lost: a connect every stagger, then no answer", 50 * time.Millisecond,
			func(chan<- net.Conn) []func(context.Context) (net.Conn, error) {
				return []func(context.Context) (net.Conn, error){lost}
			}, "no answer in", [2]int{3, 5}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			peers := make(chan net.Conn, 10)
			f := &fakeDials{plays: tc.plays(peers)}
			c := &Client{opts: Options{DialTimeout: 200 * time.Millisecond, DialStagger: tc.stagger, Dial: f.dial}}
			conn, err := c.dialAddr(context.Background(), "192.0.2.1:8883")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			} else {
				conn.Close()
			}
			if got := f.count(); got < tc.calls[0] || got > tc.calls[1] {
				t.Errorf("%d connects, want %d to %d", got, tc.calls[0], tc.calls[1])
			}
		})
	}
}

// TestDialStaggerClosesLateConnections: a connect that succeeds after
// another one won is closed, not leaked.
func TestDialStaggerClosesLateConnections(t *testing.T) {
	peers := make(chan net.Conn, 2)
	release := make(chan struct{})
	slow := func(context.Context) (net.Conn, error) {
		<-release // answers late, whatever its context says
		a, b := net.Pipe()
		peers <- b
		return a, nil
	}
	f := &fakeDials{plays: []func(context.Context) (net.Conn, error){slow, answered(peers)}}
	c := &Client{opts: Options{DialTimeout: time.Second, DialStagger: 10 * time.Millisecond, Dial: f.dial}}
	conn, err := c.dialAddr(context.Background(), "192.0.2.1:8883")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	winner := <-peers
	defer winner.Close()
	close(release)
	late := <-peers
	if _, err := late.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("the late connection's peer read %v, want EOF: it was not closed", err)
	}
	go winner.Read(make([]byte, 1))
	if _, err := conn.Write([]byte{1}); err != nil {
		t.Fatalf("the winning connection: %v", err)
	}
}
