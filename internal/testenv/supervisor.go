package testenv

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Service runs a command as systemd runs a Type=notify service with
// Restart=always and WatchdogSec=: it gives the process a NOTIFY_SOCKET
// and WATCHDOG_USEC, kills the whole process group (KillMode=control-group)
// when the process is late with READY=1 (TimeoutStartSec=) or with a
// WATCHDOG=1 (SIGABRT, as systemd's watchdog), and starts it again after
// every exit until Stop. Tests of restarts and rollbacks use it where a
// real systemd is not available.
type Service struct {
	// Argv and Env are the command (Env is added to the test's environment).
	Argv []string
	Env  []string
	// Watchdog is WatchdogSec=, StartTimeout TimeoutStartSec=, RestartSec
	// the pause between an exit and the next start.
	Watchdog, StartTimeout, RestartSec time.Duration
	// Output receives the processes' stdout and stderr.
	Output *Buffer

	t     testing.TB
	sock  *net.UnixConn
	stop  chan struct{}
	once  sync.Once
	done  chan struct{}
	mu    sync.Mutex
	log   []ServiceEvent
	pid   int
	ready bool
}

// A ServiceEvent is one thing the supervisor saw: "start" (Pid), "ready",
// "watchdog-kill", "start-timeout", "exit" (Detail: how).
type ServiceEvent struct {
	What   string
	Pid    int
	Detail string
}

// StartService starts s and stops it at the end of the test.
func StartService(t testing.TB, s *Service) *Service {
	t.Helper()
	dir, err := os.MkdirTemp("", "svc")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	s.sock, err = net.ListenUnixgram("unixgram", &net.UnixAddr{Name: filepath.Join(dir, "notify"), Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Output == nil {
		s.Output = &Buffer{}
	}
	if s.StartTimeout == 0 {
		s.StartTimeout = 90 * time.Second
	}
	if s.RestartSec == 0 {
		s.RestartSec = 100 * time.Millisecond
	}
	s.t, s.stop, s.done = t, make(chan struct{}), make(chan struct{})
	notes := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := s.sock.Read(buf)
			if err != nil {
				close(notes)
				return
			}
			notes <- string(buf[:n])
		}
	}()
	go s.run(notes)
	t.Cleanup(s.Stop)
	return s
}

func (s *Service) record(e ServiceEvent) {
	s.mu.Lock()
	s.log = append(s.log, e)
	s.mu.Unlock()
}

// Events returns what the supervisor saw so far.
func (s *Service) Events() []ServiceEvent {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]ServiceEvent(nil), s.log...)
}

// Count counts the events named what.
func (s *Service) Count(what string) int {
	n := 0
	for _, e := range s.Events() {
		if e.What == what {
			n++
		}
	}
	return n
}

// Pid is the main process's pid, 0 between runs.
func (s *Service) Pid() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pid
}

func (s *Service) run(notes <-chan string) {
	defer close(s.done)
	for {
		cmd := exec.Command(s.Argv[0], s.Argv[1:]...)
		cmd.Env = append(append(os.Environ(), s.Env...), "NOTIFY_SOCKET="+s.sock.LocalAddr().String())
		if s.Watchdog > 0 {
			cmd.Env = append(cmd.Env, "WATCHDOG_USEC="+strconv.FormatInt(s.Watchdog.Microseconds(), 10))
		}
		// A pipe of our own: cmd.Wait must return when the main process
		// exits, not when the last process of its group closes the output.
		r, w, err := os.Pipe()
		if err != nil {
			s.record(ServiceEvent{What: "exit", Detail: err.Error()})
			return
		}
		go func() { io.Copy(s.Output, r); r.Close() }()
		cmd.Stdout, cmd.Stderr = w, w
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		err = cmd.Start()
		w.Close()
		if err != nil {
			s.record(ServiceEvent{What: "exit", Detail: err.Error()})
			return
		}
		pid := cmd.Process.Pid
		s.mu.Lock()
		s.pid, s.ready = pid, false
		s.mu.Unlock()
		s.record(ServiceEvent{What: "start", Pid: pid})
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		kill := func(sig syscall.Signal) { _ = syscall.Kill(-pid, sig) }
		timer := time.NewTimer(s.StartTimeout)
		ready, stopping, stopAsked := false, false, false
		stopc := s.stop
	wait:
		for {
			select {
			case err := <-exited:
				kill(syscall.SIGKILL) // what is left of the group
				s.record(ServiceEvent{What: "exit", Pid: pid, Detail: fmt.Sprint(err)})
				break wait
			case n, ok := <-notes:
				if !ok {
					notes = nil
					continue
				}
				if stopping {
					continue // systemd ignores a service it is stopping
				}
				for _, l := range strings.Split(n, "\n") {
					switch {
					case l == "READY=1" && !ready:
						ready = true
						s.mu.Lock()
						s.ready = true
						s.mu.Unlock()
						s.record(ServiceEvent{What: "ready", Pid: pid})
						if s.Watchdog > 0 {
							timer.Reset(s.Watchdog)
						} else {
							timer.Stop()
						}
					case l == "WATCHDOG=1" && ready && s.Watchdog > 0:
						timer.Reset(s.Watchdog)
					}
				}
			case <-timer.C:
				if stopping {
					kill(syscall.SIGKILL)
					continue
				}
				what := "start-timeout"
				sig := syscall.SIGTERM
				if ready {
					what, sig = "watchdog-kill", syscall.SIGABRT
				}
				s.record(ServiceEvent{What: what, Pid: pid})
				kill(sig)
				stopping = true
				timer.Reset(5 * time.Second)
			case <-stopc:
				if !stopping {
					kill(syscall.SIGTERM)
					stopping = true
					timer.Reset(10 * time.Second)
				}
				stopAsked, stopc = true, nil
			}
		}
		timer.Stop()
		s.mu.Lock()
		s.pid = 0
		s.mu.Unlock()
		if stopAsked {
			return
		}
		select {
		case <-s.stop:
			return
		case <-time.After(s.RestartSec):
		}
	}
}

// Stop stops the service (SIGTERM, SIGKILL after 10 s) and waits.
func (s *Service) Stop() {
	s.once.Do(func() { close(s.stop) })
	<-s.done
	s.sock.Close()
}
