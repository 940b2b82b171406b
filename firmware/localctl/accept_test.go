package localctl

import (
	"context"
	"github.com/thermofleet/thermo/internal/testenv"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// flakyListener is a real unix listener whose first failures Accept calls
// fail with err, as accept(2) does when the process is out of descriptors.
// It counts the calls made to Accept.
type flakyListener struct {
	net.Listener
	err      error
	failures atomic.Int32
	calls    atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	l.calls.Add(1)
	if l.failures.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "unix", Err: os.NewSyscallError("accept4", l.err)}
	}
	return l.Listener.Accept()
}

// syncBuffer is a log destination safe for the server's goroutines.
type syncBuffer = testenv.Buffer

// serveOn runs a Server on ln with h until the test ends, and checks that
// Serve returned nil only then.
func serveOn(t *testing.T, ln net.Listener, h Handler, logs *syncBuffer) *Server {
	t.Helper()
	s := newServer(ln.Addr().String(), ln, slog.New(slog.NewTextHandler(logs, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, h) }()
	t.Cleanup(func() {
		select {
		case err := <-done:
			t.Errorf("Serve returned before the stop: %v", err)
			return
		default:
		}
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return s
}

func listenUnix(t *testing.T) (net.Listener, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	return ln, path
}

// TestAcceptErrorsAreRetried: an accept error (out of descriptors, per
// process or system-wide, or anything else) is logged and retried with
// backoff; Serve goes on, and the client that was waiting is answered.
// Serve used to return the error, which stopped the thermostat.
func TestAcceptErrorsAreRetried(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"EMFILE", syscall.EMFILE},
		{"ENFILE", syscall.ENFILE},
		{"ECONNABORTED", syscall.ECONNABORTED},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw, path := listenUnix(t)
			ln := &flakyListener{Listener: raw, err: tc.err}
			ln.failures.Store(4)
			logs := &syncBuffer{}
			serveOn(t, ln, &fakeAgent{}, logs)

			resp, err := do(t, path, Request{Op: OpStatus})
			if err != nil || !resp.OK {
				t.Fatalf("status after accept errors = %+v, %v", resp, err)
			}
			if n := ln.calls.Load(); n < 5 {
				t.Errorf("Accept called %d times, want the 4 failures and a success", n)
			}
			if got := logs.String(); strings.Count(got, "accept failed") != 4 || !strings.Contains(got, tc.err.Error()) {
				t.Errorf("logs, want 4 accept failures with %q:\n%s", tc.err, got)
			}
		})
	}
}

// blockingAgent holds every Status until release is closed (or the
// exchange's context ends), counting the exchanges inside it.
type blockingAgent struct {
	fakeAgent
	release  chan struct{}
	inFlight atomic.Int32
	peak     atomic.Int32
}

func (b *blockingAgent) Status(ctx context.Context) (any, error) {
	n := b.inFlight.Add(1)
	defer b.inFlight.Add(-1)
	for {
		p := b.peak.Load()
		if n <= p || b.peak.CompareAndSwap(p, n) {
			break
		}
	}
	select {
	case <-b.release:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return b.fakeAgent.Status(ctx)
}

// TestConcurrentExchangesCapped: at most MaxConns exchanges are served at
// once; more clients wait unaccepted (no descriptor taken) and are served
// as soon as earlier ones end.
func TestConcurrentExchangesCapped(t *testing.T) {
	raw, path := listenUnix(t)
	ln := &flakyListener{Listener: raw}
	agent := &blockingAgent{release: make(chan struct{})}
	serveOn(t, ln, agent, &syncBuffer{})

	const clients = MaxConns + 8
	errs := make(chan error, clients)
	for range clients {
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := Do(ctx, path, Request{Op: OpStatus})
			errs <- err
		}()
	}
	testenv.WaitFor(t, "MaxConns exchanges in progress", func() bool { return agent.inFlight.Load() >= MaxConns })
	// With every slot taken the server does not even call Accept again.
	if n := ln.calls.Load(); n != MaxConns {
		t.Errorf("Accept called %d times with %d exchanges in progress, want %d", n, MaxConns, MaxConns)
	}
	close(agent.release)
	for range clients {
		if err := <-errs; err != nil {
			t.Errorf("client: %v", err)
		}
	}
	if p := agent.peak.Load(); p != MaxConns {
		t.Errorf("peak of exchanges in progress %d, want %d", p, MaxConns)
	}
}

// TestCloseWhileSlotsAreFull: a stop with every slot taken and clients
// waiting returns at once (the exchanges in progress end with the context).
func TestCloseWhileSlotsAreFull(t *testing.T) {
	raw, path := listenUnix(t)
	agent := &blockingAgent{release: make(chan struct{})}
	s := newServer(path, raw, slog.New(slog.NewTextHandler(&syncBuffer{}, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx, agent) }()
	for range MaxConns + 2 {
		go func() {
			c, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, _ = Do(c, path, Request{Op: OpStatus})
		}()
	}
	testenv.WaitFor(t, "every slot taken", func() bool { return agent.inFlight.Load() == MaxConns })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Serve = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after the stop")
	}
}
