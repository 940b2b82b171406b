package systemd

import (
	"context"
	"fmt"
	"log/slog"
	"time"
)

// DefaultReadyPoll is how often Supervisor checks health before READY=1.
const DefaultReadyPoll = 100 * time.Millisecond

// Supervisor reports a service's life to systemd: READY=1 once health first
// passes, WATCHDOG=1 while it keeps passing, STOPPING=1 at the end.
type Supervisor struct {
	// Notifier receives the messages; nil sends nothing.
	Notifier *Notifier
	// Health reports nil while the service works. For the thermostat it is
	// the control loop's Healthy: nil only when the loop ticked recently
	// and the outputs are in a known state.
	Health func() error
	// Watchdog is the WatchdogSec= timeout (WatchdogInterval); pings go out
	// every half of it, as sd_watchdog_enabled(3) advises. 0: no pings.
	Watchdog time.Duration
	// ReadyPoll is how often health is checked before READY=1;
	// DefaultReadyPoll when 0.
	ReadyPoll time.Duration
	// Log gets the health transitions; slog.Default() when nil.
	Log *slog.Logger

	// NewTicker makes the ticker of the readiness polls and the watchdog
	// pings: every value received is one poll (before ready) or one
	// watchdog period (after). Nil means time.NewTicker; a clock of one's
	// own (a test's) can stand in.
	NewTicker func(d time.Duration) (ticks <-chan time.Time, stop func())
}

// Supervise runs a Supervisor for this process as systemd started it
// ($NOTIFY_SOCKET, $WATCHDOG_USEC) until ctx is done. Outside a Type=notify
// service it returns nil at once. Run it in its own goroutine beside the
// work it watches, with the context that stops that work.
func Supervise(ctx context.Context, health func() error, log *slog.Logger) error {
	n := FromEnv()
	if n == nil {
		return nil
	}
	wd, err := WatchdogInterval()
	if err != nil {
		return fmt.Errorf("systemd watchdog: %w", err)
	}
	s := &Supervisor{Notifier: n, Health: health, Watchdog: wd, Log: log}
	return s.Run(ctx)
}

// Run blocks until ctx is done. It sends READY=1 as soon as Health first
// returns nil, then a WATCHDOG=1 every Watchdog/2 only while Health returns
// nil: a stuck or failing service stops pinging and systemd kills it
// (WatchdogSec=) and restarts it (Restart=on-failure) into a known state.
// At the end it sends STOPPING=1. Send errors are logged, not returned:
// systemd going away must not stop the thermostat.
func (s *Supervisor) Run(ctx context.Context) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	send := func(f func() error) {
		if err := f(); err != nil {
			log.Warn("systemd notify failed", "err", err)
		}
	}
	defer send(func() error { return s.Notifier.Stopping("stopping") })

	health := s.Health
	if health == nil {
		health = func() error { return nil }
	}
	poll := s.ReadyPoll
	if poll <= 0 {
		poll = DefaultReadyPoll
	}
	ticks, stop := s.ticker(poll)
	// Not ready yet: poll until the first healthy check.
	var lastErr error
	for ready := false; !ready; {
		err := health()
		switch {
		case err == nil:
			ready = true
			continue
		case lastErr == nil || err.Error() != lastErr.Error():
			log.Info("waiting for a healthy start before READY=1", "reason", err)
		}
		lastErr = err
		select {
		case <-ctx.Done():
			stop()
			return nil
		case <-ticks:
		}
	}
	stop()
	send(func() error { return s.Notifier.Ready("running") })
	if s.Watchdog <= 0 {
		<-ctx.Done()
		return nil
	}
	send(s.Notifier.Watchdog)

	ticks, stop = s.ticker(s.Watchdog / 2)
	defer stop()
	healthy := true
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-ticks:
		}
		err := health()
		switch {
		case err == nil:
			if !healthy {
				log.Info("healthy again; watchdog pings resumed")
				send(func() error { return s.Notifier.Status("running") })
			}
			healthy = true
			send(s.Notifier.Watchdog)
		case healthy:
			healthy = false
			log.Error("unhealthy; watchdog pings withheld, systemd restarts the service if this lasts",
				"reason", err, "watchdog", s.Watchdog)
			send(func() error { return s.Notifier.Status("unhealthy: " + err.Error()) })
		}
	}
}

func (s *Supervisor) ticker(d time.Duration) (<-chan time.Time, func()) {
	if s.NewTicker != nil {
		return s.NewTicker(d)
	}
	t := time.NewTicker(d)
	return t.C, t.Stop
}
