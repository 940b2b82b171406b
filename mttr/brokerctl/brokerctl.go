// Package brokerctl runs the MQTT brokers the mttr harness faults, and
// faults them: kill (SIGKILL, then started again), hang (SIGSTOP, then
// SIGCONT: the sockets stay open and only keep-alive can tell), and
// partition (the broker runs in a network namespace whose link is cut, so
// every packet between it and its clients is silently dropped).
//
// A broker is a child process: Mosquitto with the configuration of package
// provisioning, the node aedes server of brokers/aedes, controllerlite's
// embedded broker (a process that runs controllerlite's server package), or
// an external broker the user takes down and up with commands of their own.
// "Up" always means the moment the broker's port accepts a TCP connection
// again, polled every few milliseconds: recovery is measured from there.
package brokerctl

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PollInterval is how often WaitAccepting tries the port.
const PollInterval = 2 * time.Millisecond

// Broker is a broker the harness can fault.
type Broker interface {
	// Name is "mosquitto", "aedes", "embedded" or "external".
	Name() string
	// Addr is HOST:PORT as the clients dial it.
	Addr() string
	// Start starts the broker (or, for an external one after Kill, runs
	// the up command) and returns when its port accepts connections,
	// with the time it first did.
	Start(ctx context.Context) (time.Time, error)
	// Kill takes it down abruptly and returns once it is gone.
	Kill(ctx context.Context) error
	// Pause makes it hang with its sockets open; Resume undoes it.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// Stop ends it for good at the end of a run (not for an external
	// broker, which the user owns).
	Stop() error
}

// WaitAccepting polls addr until a TCP connection succeeds and returns
// when it did. exited, if not nil, ends the wait with an error when it is
// closed (the broker process died).
func WaitAccepting(ctx context.Context, addr string, exited <-chan struct{}) (time.Time, error) {
	t := time.NewTicker(PollInterval)
	defer t.Stop()
	var lastErr error
	for {
		d := net.Dialer{Timeout: 200 * time.Millisecond}
		c, err := d.DialContext(ctx, "tcp", addr)
		if err == nil {
			up := time.Now()
			c.Close()
			return up, nil
		}
		lastErr = err
		select {
		case <-ctx.Done():
			return time.Time{}, fmt.Errorf("waiting for %s to accept connections: %w (last: %v)", addr, ctx.Err(), lastErr)
		case <-exited:
			return time.Time{}, fmt.Errorf("the broker exited before accepting connections on %s", addr)
		case <-t.C:
		}
	}
}

// Process is a broker run as a child process.
type Process struct {
	// Kind is what Name returns.
	Kind string
	// Argv is the command line.
	Argv []string
	// Env, if not nil, is the environment.
	Env []string
	// Address is HOST:PORT the clients dial.
	Address string
	// LogFile receives the process's stdout and stderr, appended.
	LogFile string
	// NetNS, if set, runs the process inside that network namespace.
	NetNS *NetNS

	mu     sync.Mutex
	proc   *os.Process
	done   chan struct{}
	paused bool
}

// Name implements Broker.
func (p *Process) Name() string { return p.Kind }

// Addr implements Broker.
func (p *Process) Addr() string { return p.Address }

// Start implements Broker.
func (p *Process) Start(ctx context.Context) (time.Time, error) {
	p.mu.Lock()
	if p.proc != nil {
		p.mu.Unlock()
		return time.Time{}, fmt.Errorf("%s is already running", p.Kind)
	}
	argv := p.Argv
	if p.NetNS != nil {
		argv = p.NetNS.Wrap(argv)
	}
	logf, err := os.OpenFile(p.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.mu.Unlock()
		return time.Time{}, fmt.Errorf("%s log: %w", p.Kind, err)
	}
	fmt.Fprintf(logf, "=== mttr: starting %s at %s: %s\n", p.Kind, time.Now().Format(time.RFC3339Nano), strings.Join(argv, " "))
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = p.Env
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so a Ctrl-C at the terminal reaches only
	// the harness, which then stops the broker itself; and killed with
	// the harness if that dies first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	err = cmd.Start()
	logf.Close()
	if err != nil {
		p.mu.Unlock()
		return time.Time{}, fmt.Errorf("start %s: %w", p.Kind, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.proc, p.done, p.paused = cmd.Process, done, false
	p.mu.Unlock()

	up, err := WaitAccepting(ctx, p.Address, done)
	if err != nil {
		p.Kill(context.Background())
		return time.Time{}, fmt.Errorf("%s: %w; see %s:\n%s", p.Kind, err, p.LogFile, Tail(p.LogFile, 15))
	}
	return up, nil
}

// running returns the process and its exit channel, or an error.
func (p *Process) running() (*os.Process, chan struct{}, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil, nil, fmt.Errorf("%s is not running", p.Kind)
	}
	return p.proc, p.done, nil
}

// Kill implements Broker: SIGKILL, and wait for the process to be gone.
func (p *Process) Kill(ctx context.Context) error {
	proc, done, err := p.running()
	if err != nil {
		return err
	}
	if err := proc.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", p.Kind, err)
	}
	select {
	case <-done:
	case <-ctx.Done():
		return fmt.Errorf("kill %s: still running: %w", p.Kind, ctx.Err())
	}
	p.mu.Lock()
	p.proc, p.done, p.paused = nil, nil, false
	p.mu.Unlock()
	return nil
}

// Pause implements Broker with SIGSTOP.
func (p *Process) Pause(context.Context) error { return p.signal(syscall.SIGSTOP, true) }

// Resume implements Broker with SIGCONT.
func (p *Process) Resume(context.Context) error { return p.signal(syscall.SIGCONT, false) }

func (p *Process) signal(sig syscall.Signal, paused bool) error {
	proc, _, err := p.running()
	if err != nil {
		return err
	}
	if err := proc.Signal(sig); err != nil {
		return fmt.Errorf("signal %s: %w", p.Kind, err)
	}
	p.mu.Lock()
	p.paused = paused
	p.mu.Unlock()
	return nil
}

// Stop implements Broker: SIGTERM, then SIGKILL after a grace period.
func (p *Process) Stop() error {
	proc, done, err := p.running()
	if err != nil {
		return nil // not running: nothing to stop
	}
	p.mu.Lock()
	if p.paused {
		proc.Signal(syscall.SIGCONT)
	}
	p.mu.Unlock()
	proc.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		proc.Signal(syscall.SIGKILL)
		<-done
	}
	p.mu.Lock()
	p.proc, p.done = nil, nil
	p.mu.Unlock()
	return nil
}

// PID is the broker's process id, 0 when it is not running.
func (p *Process) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return 0
	}
	return p.proc.Pid
}

// External is a broker the user runs; the harness takes it down and up
// with the user's shell commands, for example `docker stop NAME` and
// `docker start NAME`, or `docker pause`/`docker unpause` for a hang.
type External struct {
	Address                             string
	DownCmd, UpCmd, PauseCmd, ResumeCmd string
	// Log receives the commands' output.
	Log io.Writer

	started bool
}

// Name implements Broker.
func (e *External) Name() string { return "external" }

// Addr implements Broker.
func (e *External) Addr() string { return e.Address }

// Start implements Broker: the first time it only waits for the broker;
// after Kill it runs the up command first.
func (e *External) Start(ctx context.Context) (time.Time, error) {
	if e.started {
		if err := e.run(ctx, "up", e.UpCmd); err != nil {
			return time.Time{}, err
		}
	}
	e.started = true
	return WaitAccepting(ctx, e.Address, nil)
}

// Kill implements Broker with the down command.
func (e *External) Kill(ctx context.Context) error { return e.run(ctx, "down", e.DownCmd) }

// Pause implements Broker with the pause command.
func (e *External) Pause(ctx context.Context) error { return e.run(ctx, "pause", e.PauseCmd) }

// Resume implements Broker with the resume command.
func (e *External) Resume(ctx context.Context) error { return e.run(ctx, "resume", e.ResumeCmd) }

// Stop implements Broker: an external broker is left as it is.
func (e *External) Stop() error { return nil }

func (e *External) run(ctx context.Context, what, command string) error {
	if strings.TrimSpace(command) == "" {
		return fmt.Errorf("external broker: no %s command given", what)
	}
	cmd := exec.CommandContext(ctx, "sh", "-c", command)
	out := e.Log
	if out == nil {
		out = io.Discard
	}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("external broker %s command %q: %w", what, command, err)
	}
	return nil
}

// Tail returns the last n lines of a file, for error messages.
func Tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
