// Package systemd talks to systemd from inside a service: the sd_notify
// protocol (READY=1, WATCHDOG=1, STOPPING=1, STATUS=...) over the datagram
// socket named by $NOTIFY_SOCKET, and a supervisor that pings the watchdog
// only while the caller's health check passes, so a hung control loop is
// killed and restarted by systemd with its outputs reset.
//
// It also embeds the unit files the .deb ships (thermostat.service,
// controllerlite.service), so `thermostat install` writes the same text.
//
// Everything is a no-op when the process was not started by systemd with
// Type=notify ($NOTIFY_SOCKET unset), so the same binary runs by hand.
package systemd

import (
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"
)

// Notifier sends sd_notify messages to systemd. A nil *Notifier is valid and
// sends nothing: that is what FromEnv returns outside a Type=notify service.
type Notifier struct {
	addr *net.UnixAddr
}

// FromEnv returns a Notifier for $NOTIFY_SOCKET, or nil when it is unset.
// A name starting with '@' is an abstract socket, as systemd documents.
func FromEnv() *Notifier {
	return New(os.Getenv("NOTIFY_SOCKET"))
}

// New returns a Notifier for the socket path (or @abstract name), nil for "".
func New(socket string) *Notifier {
	if socket == "" {
		return nil
	}
	// Go maps a leading '@' to the abstract namespace itself.
	return &Notifier{addr: &net.UnixAddr{Name: socket, Net: "unixgram"}}
}

// Notify sends the given assignments (e.g. "READY=1", "STATUS=...") in one
// datagram. It dials for every message, as sd_notify(3) does, so a socket
// that systemd recreated (daemon-reexec) is still reached.
func (n *Notifier) Notify(states ...string) error {
	if n == nil || len(states) == 0 {
		return nil
	}
	for _, s := range states {
		if !strings.Contains(s, "=") || strings.Contains(s, "\n") {
			return fmt.Errorf("sd_notify: malformed assignment %q", s)
		}
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("sd_notify: dial %s: %w", n.addr.Name, err)
	}
	defer conn.Close()
	if _, err := conn.Write([]byte(strings.Join(states, "\n") + "\n")); err != nil {
		return fmt.Errorf("sd_notify: send to %s: %w", n.addr.Name, err)
	}
	return nil
}

// Ready tells systemd that start-up is finished (Type=notify units are
// "activating" until then), with a status line.
func (n *Notifier) Ready(status string) error {
	return n.Notify("READY=1", "STATUS="+oneLine(status))
}

// Stopping tells systemd that the service is shutting down on purpose.
func (n *Notifier) Stopping(status string) error {
	return n.Notify("STOPPING=1", "STATUS="+oneLine(status))
}

// Watchdog is one keep-alive ping of the service watchdog (WatchdogSec=).
func (n *Notifier) Watchdog() error { return n.Notify("WATCHDOG=1") }

// Status sets the free-form status line `systemctl status` shows.
func (n *Notifier) Status(status string) error { return n.Notify("STATUS=" + oneLine(status)) }

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

// WatchdogInterval returns the watchdog timeout systemd set for this
// process through $WATCHDOG_USEC (from WatchdogSec=), or 0 when the watchdog
// is off or meant for another process ($WATCHDOG_PID names a different pid).
func WatchdogInterval() (time.Duration, error) {
	return watchdogInterval(os.Getenv("WATCHDOG_USEC"), os.Getenv("WATCHDOG_PID"), os.Getpid())
}

func watchdogInterval(usec, pid string, self int) (time.Duration, error) {
	if usec == "" {
		return 0, nil
	}
	if pid != "" {
		p, err := strconv.Atoi(pid)
		if err != nil {
			return 0, fmt.Errorf("WATCHDOG_PID=%q: %w", pid, err)
		}
		if p != self {
			return 0, nil
		}
	}
	u, err := strconv.ParseInt(usec, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("WATCHDOG_USEC=%q: %w", usec, err)
	}
	if u <= 0 {
		return 0, errors.New("WATCHDOG_USEC must be positive, got " + usec)
	}
	return time.Duration(u) * time.Microsecond, nil
}
