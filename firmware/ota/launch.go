package ota

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/release"
)

// Launcher is the packaged binary's first step in `thermostat run`: it
// decides which binary runs this start.
//
//   - A slot on trial runs as the launcher's child: each start counts an
//     attempt (before the child starts, so a crash, a watchdog kill or a
//     power cut counts too), and the child must prove healthy (CommitTrial)
//     within the trial's deadline. A child that exits first ends this start
//     with a failure (the service manager restarts the launcher); one that
//     misses the deadline is stopped. When the attempts are used up, or the
//     deadline passed, the trial is rolled back and the active version
//     starts at once, without waiting for the service manager.
//   - Otherwise the active slot's binary replaces the launcher (exec: same
//     process, so the service manager's watchdog and notify socket see one
//     main process), unless the packaged binary is newer: a .deb upgrade
//     supersedes the slots, which are reset.
//   - Otherwise the packaged binary runs itself.
type Launcher struct {
	// Dir is the state directory.
	Dir string
	// Version is the packaged binary's version.
	Version string
	// Args are the arguments a slot binary gets (argv[1:]: "run" and its
	// flags, as the service manager gave them).
	Args []string
	Log  *slog.Logger

	// StopGrace is how long a trial that missed its deadline has after
	// SIGTERM before SIGKILL; 10 s when 0.
	StopGrace time.Duration
	// Poll is how often a running trial's record is read; 500 ms when 0.
	Poll time.Duration
	// exec replaces the process (syscall.Exec); a test's stands in.
	exec func(path string, argv, env []string) error
}

// Outcome is what the caller does after Launch.
type Outcome struct {
	// RunSelf: the packaged binary runs the thermostat itself.
	RunSelf bool
	// Exit is the exit status otherwise: the trial child's, or 1 after a
	// failed attempt, so the service manager restarts the launcher.
	Exit int
}

// ErrExitFailure is what the launcher returns for Outcome.Exit != 0.
var ErrExitFailure = errors.New("the release on trial did not prove healthy this start")

// Launch decides and does. It returns only to let the packaged binary run
// (RunSelf) or to end the process (Exit); an exec does not return.
func (l *Launcher) Launch(ctx context.Context) Outcome {
	if Running() != Packaged {
		return Outcome{RunSelf: true} // the launcher started this slot binary
	}
	if l.Log == nil {
		l.Log = slog.Default()
	}
	st, err := Load(l.Dir)
	if err != nil {
		l.Log.Error("OTA slots unreadable: running the packaged binary", "err", err)
		return Outcome{RunSelf: true}
	}
	if st.Active == "" && st.Trial == nil {
		return Outcome{RunSelf: true}
	}
	if l.supersedes(st) {
		l.Log.Warn("the packaged binary is newer than the OTA slots (a package upgrade): slots reset, the packaged binary runs",
			"packaged", l.Version, "active", st.Slots[st.Active].Version)
		if _, err := Update(l.Dir, func(st *State) error {
			st.Previous, st.Active, st.Trial = "", "", nil
			return nil
		}); err != nil {
			l.Log.Error("resetting the OTA slots", "err", err)
		}
		return Outcome{RunSelf: true}
	}
	if st.Trial != nil {
		if out, done := l.trial(ctx); done {
			return out
		}
		if st, err = Load(l.Dir); err != nil {
			l.Log.Error("OTA slots unreadable: running the packaged binary", "err", err)
			return Outcome{RunSelf: true}
		}
	}
	return l.active(st)
}

// supersedes reports whether the packaged binary is newer than every
// version in the slots that could run.
func (l *Launcher) supersedes(st State) bool {
	pv, err := release.ParseVersion(l.Version)
	if err != nil {
		return false // a dev build: the slots decide
	}
	for _, s := range []string{st.Active, trialSlot(st)} {
		if s == "" {
			continue
		}
		sv, err := release.ParseVersion(st.Slots[s].Version)
		if err == nil && sv.Compare(pv) >= 0 {
			return false
		}
	}
	return true
}

func trialSlot(st State) string {
	if st.Trial == nil {
		return ""
	}
	return st.Trial.Slot
}

// active execs the active slot, or runs the packaged binary.
func (l *Launcher) active(st State) Outcome {
	if st.Active == "" {
		return Outcome{RunSelf: true}
	}
	bin := BinaryPath(l.Dir, st.Active)
	if _, err := os.Stat(bin); err != nil {
		l.Log.Error("the active OTA slot has no binary: running the packaged binary", "slot", st.Active, "err", err)
		if _, err := Update(l.Dir, func(st *State) error { st.Active = ""; return nil }); err != nil {
			l.Log.Error("resetting the OTA slots", "err", err)
		}
		return Outcome{RunSelf: true}
	}
	l.Log.Info("starting the active OTA slot", "slot", st.Active, "version", st.Slots[st.Active].Version)
	ex := l.exec
	if ex == nil {
		ex = syscall.Exec
	}
	err := ex(bin, append([]string{bin}, l.Args...), slotEnv(os.Environ(), st.Active, false))
	// Only a failed exec returns: the binary is there but does not run here.
	l.Log.Error("cannot start the active OTA slot: running the packaged binary", "slot", st.Active, "err", err)
	return Outcome{RunSelf: true}
}

// slotEnv is env for a slot binary: EnvSlot set; for a child (a trial),
// without WATCHDOG_PID, which names the launcher, so the child's own
// watchdog pings go out (the unit has NotifyAccess=all).
func slotEnv(env []string, slot string, child bool) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if strings.HasPrefix(kv, EnvSlot+"=") || child && strings.HasPrefix(kv, "WATCHDOG_PID=") {
			continue
		}
		out = append(out, kv)
	}
	return append(out, EnvSlot+"="+slot)
}

// trial runs one attempt of the trial. done is false when the trial was
// rolled back (or committed) and the active slot should start now.
func (l *Launcher) trial(ctx context.Context) (Outcome, bool) {
	var tr Trial
	st, err := Update(l.Dir, func(st *State) error {
		t := st.Trial
		bin := BinaryPath(l.Dir, t.Slot)
		switch _, statErr := os.Stat(bin); {
		case statErr != nil:
			st.rollback(fmt.Sprintf("the binary of slot %s is missing: %v", t.Slot, statErr), time.Now())
		case t.Attempts >= t.MaxAttempts:
			last := t.LastFailure
			if last == "" {
				last = "ended without a word (a power cut, or the whole service killed)"
			}
			st.rollback(fmt.Sprintf("%d starts without proving healthy; the last %s", t.Attempts, last), time.Now())
		default:
			t.Attempts++
			tr = *t
		}
		return nil
	})
	if err != nil {
		l.Log.Error("OTA trial: cannot record the attempt: rolling back", "err", err)
		l.fail("the slots record cannot be written: "+err.Error(), true)
		return Outcome{}, false
	}
	if st.Trial == nil {
		l.Log.Error("OTA trial failed: rolled back", "version", st.LastRollback.Version, "reason", st.LastRollback.Reason)
		return Outcome{}, false
	}
	bin := BinaryPath(l.Dir, tr.Slot)
	l.Log.Info("starting the OTA release on trial", "slot", tr.Slot, "version", tr.Version,
		"attempt", tr.Attempts, "of", tr.MaxAttempts, "deadline", tr.Deadline())
	cmd := exec.Command(bin, l.Args...)
	cmd.Env = slotEnv(os.Environ(), tr.Slot, true)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 4)
	// SIGABRT is the service manager's watchdog (WatchdogSignal=): the
	// launcher survives it to record the hang, and passes it on.
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGABRT)
	defer signal.Stop(sigs)
	if err := cmd.Start(); err != nil {
		// It will not start on any attempt (wrong format, not executable).
		l.fail("the binary does not start: "+err.Error(), true)
		return Outcome{}, false
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	poll := l.Poll
	if poll <= 0 {
		poll = 500 * time.Millisecond
	}
	ticker := time.NewTicker(poll)
	defer ticker.Stop()
	deadline := time.NewTimer(tr.Deadline())
	defer deadline.Stop()
	stopped := false  // the service manager asked us to stop
	watchdog := false // its watchdog fired
	for {
		select {
		case err := <-exited:
			if stopped {
				return Outcome{Exit: exitCode(err)}, true
			}
			if l.committed(tr.Slot) {
				l.Log.Info("the OTA release exited after proving healthy", "slot", tr.Slot, "err", err)
				return Outcome{Exit: exitCode(err)}, true
			}
			reason := "exited before proving healthy: " + describeExit(err)
			l.Log.Error("OTA trial attempt failed", "slot", tr.Slot, "version", tr.Version, "reason", reason)
			if watchdog {
				// The service manager is stopping the whole service:
				// record, and let it restart us.
				l.fail("hung: the service watchdog killed it before it proved healthy", false)
				return Outcome{Exit: 1}, true
			}
			if l.fail(reason, tr.Attempts >= tr.MaxAttempts) {
				return Outcome{}, false
			}
			return Outcome{Exit: 1}, true
		case s := <-sigs:
			if s == syscall.SIGABRT {
				watchdog = true
			} else {
				stopped = true
			}
			_ = cmd.Process.Signal(s)
		case <-ticker.C:
			if l.committed(tr.Slot) {
				deadline.Stop()
			}
		case <-deadline.C:
			if l.committed(tr.Slot) {
				continue
			}
			reason := fmt.Sprintf("not healthy within %s (control loop, broker connection, state synced)", tr.Deadline())
			l.Log.Error("OTA trial missed its deadline: stopping it", "slot", tr.Slot, "version", tr.Version)
			l.stop(cmd, exited)
			l.fail(reason, true)
			return Outcome{}, false
		case <-ctx.Done():
			_ = cmd.Process.Signal(syscall.SIGTERM)
			stopped = true
		}
	}
}

// committed reports whether slot's trial has ended in its commit.
func (l *Launcher) committed(slot string) bool {
	st, err := Load(l.Dir)
	return err == nil && st.Trial == nil && st.Active == slot
}

// fail records reason as the trial attempt's failure and, if final or
// attempts are used up, rolls it back. It reports whether it rolled back
// (or the trial is otherwise over).
func (l *Launcher) fail(reason string, final bool) bool {
	over := false
	st, err := Update(l.Dir, func(st *State) error {
		if st.Trial == nil {
			over = true
			return errNoChange
		}
		st.Trial.LastFailure = reason
		if final || st.Trial.Attempts >= st.Trial.MaxAttempts {
			st.rollback(reason, time.Now())
			over = true
		}
		return nil
	})
	if err != nil && !errors.Is(err, errNoChange) {
		l.Log.Error("OTA trial: cannot record the failure", "err", err)
	}
	if over && st.LastRollback != nil {
		l.Log.Error("OTA release rolled back", "version", st.LastRollback.Version, "reason", st.LastRollback.Reason)
	}
	return over
}

// stop ends a trial child: SIGTERM, then SIGKILL after StopGrace.
func (l *Launcher) stop(cmd *exec.Cmd, exited <-chan error) {
	grace := l.StopGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(grace):
		_ = cmd.Process.Kill()
		<-exited
	}
}

func exitCode(err error) int {
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee) && ee.ExitCode() > 0:
		return ee.ExitCode()
	}
	return 1
}

func describeExit(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return "killed by " + ws.Signal().String()
		}
		return fmt.Sprintf("exit status %d", ee.ExitCode())
	}
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
