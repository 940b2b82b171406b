package systemd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal/sim"
)

// listen opens the datagram socket systemd would own for the test, at a
// short path (sun_path holds 108 bytes) or, with "@", an abstract name.
func listen(t *testing.T, abstract bool) (string, *net.UnixConn) {
	t.Helper()
	var name string
	if abstract {
		name = fmt.Sprintf("@thermo-notify-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	} else {
		dir, err := os.MkdirTemp("", "sdn")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		name = filepath.Join(dir, "notify")
	}
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return name, c
}

// recv returns the next datagram, failing the test after timeout.
func recv(t *testing.T, c *net.UnixConn, timeout time.Duration) string {
	t.Helper()
	msg, err := tryRecv(c, timeout)
	if err != nil {
		t.Fatalf("no notify message within %v: %v", timeout, err)
	}
	return msg
}

func tryRecv(c *net.UnixConn, timeout time.Duration) (string, error) {
	buf := make([]byte, 4096)
	c.SetReadDeadline(time.Now().Add(timeout))
	n, err := c.Read(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

func TestNotifyMessages(t *testing.T) {
	for _, abstract := range []bool{false, true} {
		t.Run(fmt.Sprintf("abstract=%v", abstract), func(t *testing.T) {
			name, c := listen(t, abstract)
			n := New(name)
			for _, tc := range []struct {
				send func() error
				want string
			}{
				{func() error { return n.Ready("running") }, "READY=1\nSTATUS=running\n"},
				{n.Watchdog, "WATCHDOG=1\n"},
				{func() error { return n.Status("two\nlines") }, "STATUS=two lines\n"},
				{func() error { return n.Stopping("bye") }, "STOPPING=1\nSTATUS=bye\n"},
				{func() error { return n.Notify("EXTEND_TIMEOUT_USEC=1000000") }, "EXTEND_TIMEOUT_USEC=1000000\n"},
			} {
				if err := tc.send(); err != nil {
					t.Fatal(err)
				}
				if got := recv(t, c, 5*time.Second); got != tc.want {
					t.Errorf("got %q, want %q", got, tc.want)
				}
			}
		})
	}
}

func TestNotifyErrors(t *testing.T) {
	name, _ := listen(t, false)
	if err := New(name).Notify("READY"); err == nil {
		t.Error("an assignment without '=' was sent")
	}
	gone := filepath.Join(t.TempDir(), "nobody-listens")
	err := New(gone).Notify("READY=1")
	if err == nil || !strings.Contains(err.Error(), gone) {
		t.Errorf("notify to a missing socket: %v, want an error naming it", err)
	}
}

func TestNoNotifySocketIsANoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := FromEnv()
	if n != nil {
		t.Fatalf("FromEnv() = %v without NOTIFY_SOCKET", n)
	}
	for _, f := range []func() error{n.Watchdog, func() error { return n.Ready("x") }, func() error { return n.Stopping("x") }} {
		if err := f(); err != nil {
			t.Errorf("nil notifier: %v", err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- Supervise(context.Background(), func() error { return nil }, slog.Default()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Supervise without NOTIFY_SOCKET: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Supervise blocked without NOTIFY_SOCKET")
	}
}

func TestWatchdogInterval(t *testing.T) {
	for _, tc := range []struct {
		name, usec, pid string
		want            time.Duration
		wantErr         bool
	}{
		{"unset", "", "", 0, false},
		{"no pid", "30000000", "", 30 * time.Second, false},
		{"our pid", "500000", "42", 500 * time.Millisecond, false},
		{"another pid", "500000", "43", 0, false},
		{"garbage usec", "soon", "", 0, true},
		{"zero usec", "0", "", 0, true},
		{"garbage pid", "500000", "me", 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := watchdogInterval(tc.usec, tc.pid, 42)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Errorf("watchdogInterval(%q, %q) = %v, %v; want %v, error %v", tc.usec, tc.pid, got, err, tc.want, tc.wantErr)
			}
		})
	}
	t.Setenv("WATCHDOG_USEC", "2000000")
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))
	if d, err := WatchdogInterval(); d != 2*time.Second || err != nil {
		t.Errorf("WatchdogInterval() = %v, %v from the environment", d, err)
	}
}

// TestSupervisorSteps drives the supervisor step by step: the test answers
// every health check and gives every tick over unbuffered channels, so it
// knows where the supervisor is and checks "nothing was sent" without
// waiting on time.
func TestSupervisorSteps(t *testing.T) {
	name, c := listen(t, false)
	answers := make(chan error)
	ticks := make(chan time.Time)
	s := &Supervisor{
		Notifier:  New(name),
		Health:    func() error { return <-answers },
		Watchdog:  time.Second,
		Log:       slog.New(slog.DiscardHandler),
		NewTicker: func(time.Duration) (<-chan time.Time, func()) { return ticks, func() {} },
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()

	unknown, stale := errors.New("outputs unknown"), errors.New("last tick 20s ago")
	health := func(err error) { answers <- err }
	// tick returns once the supervisor is waiting for a tick again, i.e.
	// once everything the previous health answer caused has been sent.
	tick := func() { ticks <- time.Now() }
	nothing := func(when string) {
		t.Helper()
		if msg, err := tryRecv(c, 0); err == nil {
			t.Fatalf("%s: sent %q, want nothing", when, msg)
		}
	}
	expect := func(want string) {
		t.Helper()
		if got := recv(t, c, 5*time.Second); got != want {
			t.Fatalf("got %q, want %q", got, want)
		}
	}

	health(unknown)
	tick()
	nothing("unhealthy at start")
	health(unknown)
	tick()
	nothing("still unhealthy")
	health(nil)
	expect("READY=1\nSTATUS=running\n")
	expect("WATCHDOG=1\n")
	tick()
	health(nil)
	expect("WATCHDOG=1\n")
	tick()
	health(stale)
	expect("STATUS=unhealthy: last tick 20s ago\n")
	tick()
	health(stale)
	tick()
	nothing("unhealthy: no ping")
	health(nil)
	expect("STATUS=running\n")
	expect("WATCHDOG=1\n")
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	expect("STOPPING=1\nSTATUS=stopping\n")
}

// TestSuperviseControlLoop runs the real control loop on the simulated
// board with systemd's environment: READY=1 once the loop has switched the
// outputs to a known state, WATCHDOG=1 while it ticks, none once it stops.
func TestSuperviseControlLoop(t *testing.T) {
	name, c := listen(t, false)
	t.Setenv("NOTIFY_SOCKET", name)
	t.Setenv("WATCHDOG_USEC", "200000") // pings every 100 ms
	t.Setenv("WATCHDOG_PID", fmt.Sprint(os.Getpid()))

	board, err := sim.New(sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := control.DefaultConfig()
	cfg.Interval = 100 * time.Millisecond
	loop, err := control.New(cfg, board, control.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if loop.Healthy() == nil {
		t.Fatal("loop healthy before Run")
	}

	supCtx, stopSup := context.WithCancel(context.Background())
	supDone := make(chan error, 1)
	go func() { supDone <- Supervise(supCtx, loop.Healthy, slog.New(slog.DiscardHandler)) }()
	// Not ready while the loop is not running.
	if msg, err := tryRecv(c, 300*time.Millisecond); err == nil {
		t.Fatalf("sent %q before the control loop ran", msg)
	}

	loopCtx, stopLoop := context.WithCancel(context.Background())
	loopDone := make(chan error, 1)
	go func() { loopDone <- loop.Run(loopCtx) }()
	if got := recv(t, c, 5*time.Second); got != "READY=1\nSTATUS=running\n" {
		t.Fatalf("first message %q, want READY=1", got)
	}
	for i := 0; i < 3; i++ {
		if got := recv(t, c, 5*time.Second); got != "WATCHDOG=1\n" {
			t.Fatalf("message %q, want WATCHDOG=1", got)
		}
	}

	stopLoop() // as if the loop died: its outputs go off, it is unhealthy
	if err := <-loopDone; err != nil {
		t.Fatalf("control loop: %v", err)
	}
	for {
		got := recv(t, c, 5*time.Second)
		if strings.HasPrefix(got, "STATUS=unhealthy: ") {
			break
		}
		if got != "WATCHDOG=1\n" {
			t.Fatalf("message %q, want WATCHDOG=1 or the unhealthy status", got)
		}
	}
	// Three watchdog periods without a ping: systemd would kill it now.
	if msg, err := tryRecv(c, 300*time.Millisecond); err == nil {
		t.Fatalf("sent %q while the loop is stopped", msg)
	}
	stopSup()
	if err := <-supDone; err != nil {
		t.Fatal(err)
	}
	if got := recv(t, c, 5*time.Second); got != "STOPPING=1\nSTATUS=stopping\n" {
		t.Fatalf("last message %q, want STOPPING=1", got)
	}
}
