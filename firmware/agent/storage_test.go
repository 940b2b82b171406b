package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// failingStore is a state directory that is full or read-only while its
// error is set, and works again once it is cleared.
type failingStore struct {
	Store
	mu  sync.Mutex
	err error
}

func (f *failingStore) fail(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.err = err
}

func (f *failingStore) Save(st protocol.DeviceState) error {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		// As state.Store reports it: the temp file could not be written.
		return fmt.Errorf("save state: %w", &fs.PathError{Op: "write", Path: "/var/lib/thermostat/.state.json.tmp-1", Err: err})
	}
	return f.Store.Save(st)
}

var storageErrors = []struct {
	name string
	err  syscall.Errno
}{
	{"full", syscall.ENOSPC},
	{"read-only", syscall.EROFS},
}

// storageAlert returns the storage_error alert of st, if raised.
func storageAlert(st Status) (protocol.Alert, bool) {
	for _, a := range st.Alerts {
		if a.Code == protocol.AlertStorageError {
			return a, true
		}
	}
	return protocol.Alert{}, false
}

// noEventSince fails the test if ctl received an event of id with a
// clock other than allowed, up to a marker sent through the broker now:
// had the device sent one, it would have arrived first.
func noEventSince(t *testing.T, ctl *controller, allowed ...protocol.Clock) {
	t.Helper()
	marker := fmt.Sprintf("marker-%d", time.Now().UnixNano())
	// The controller may publish only commands: one to a device that
	// does not exist.
	topic := protocol.Topic(root, "marker", protocol.KindCmd)
	ctl.Publish(t, topic, 0, false, []byte(marker))
	ctl.WaitPayload(t, topic, marker)
	for _, ev := range ctl.events() {
		ok := false
		for _, c := range allowed {
			ok = ok || ev.VC == c
		}
		if !ok {
			t.Fatalf("an event was sent while the state could not be saved: %v %v", ev.VC, ev.Props)
		}
	}
}

// TestStorageFailure: with the state directory full or read-only the agent
// keeps running on its last saved state. A local change is refused with
// the reason; a Command and a button change are not applied (the control
// loop goes back to the saved settings); nothing is sent; the alert shows
// in the status and the telemetry; one ERROR line a minute counts the
// failures. When the disk takes the state again, a retry on the agent's
// clock saves it, clears the alert, and the device catches up: it sends
// its state and gets the retained Command again, and a new change works.
func TestStorageFailure(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		for _, tc := range storageErrors {
			t.Run(tc.name, func(t *testing.T) {
				id := "d-" + tc.name + "-" + e.name
				ctl := newController(t, e, id)
				store := &failingStore{}
				d := startDevice(t, e, id, t.TempDir(), fresh(), devOpts{wrap: func(s Store) Store { store.Store = s; return store }})
				ctl.waitEvent(vc(0, 1))
				saved := control.Settings{SetpointC: 20, Mode: "off"}
				if got := d.therm.Settings(); got != saved {
					t.Fatalf("thermostat settings %+v", got)
				}

				store.fail(tc.err)
				ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
				defer cancel()
				err := d.agent.Set(ctx, map[string]any{protocol.PropSetpoint: 30.0})
				if !errors.Is(err, ErrNotSaved) || !errors.Is(err, tc.err) {
					t.Fatalf("Set = %v, want ErrNotSaved and %v", err, tc.err)
				}
				if !strings.Contains(err.Error(), tc.err.Error()) || !strings.Contains(err.Error(), "last saved settings") {
					t.Errorf("Set's error %q does not say why and what the thermostat does", err)
				}
				st := d.status()
				checkProp(t, st.Props, protocol.PropSetpoint, 20.0, vc(0, 0))
				if st.VC != vc(0, 1) || !st.Connected {
					t.Errorf("after the refused set: vc %v connected %v, want [0,1] connected", st.VC, st.Connected)
				}
				if a, ok := storageAlert(st); !ok || !strings.Contains(a.Detail, tc.err.Error()) || !a.Since.Equal(testStart) {
					t.Errorf("status alerts %+v, want storage_error since %v with the reason", st.Alerts, testStart)
				}
				ctl.WaitMatch(t, "telemetry with the alert", func(m testenv.Message) bool {
					return m.Topic == protocol.Topic(root, id, protocol.KindTelemetry) && strings.Contains(string(m.Payload), `"alerts":["storage_error"]`)
				})

				// A Command is not applied: the broker keeps it (retained).
				before := d.agent.Counters().Received
				ctl.command(`{"v":1,"vc":[1,0],"props":{"setpoint_c":{"val":25,"w":[1,0]}},"src":"controller"}`, true)
				testenv.WaitFor(t, "the command received", func() bool { return d.agent.Counters().Received > before })
				// A button burst the loop applied by itself is undone there.
				pressed := control.Settings{SetpointC: 23, Mode: "heat"}
				d.therm.SetSettings(pressed)
				d.agent.ButtonChange(pressed)
				testenv.WaitFor(t, "the loop back on the saved settings", func() bool { return d.therm.Settings() == saved })
				st = d.status()
				checkProp(t, st.Props, protocol.PropSetpoint, 20.0, vc(0, 0))
				checkProp(t, st.Props, protocol.PropMode, "off", vc(0, 0))
				if c := st.Counters; st.VC != vc(0, 1) || c.Applied != 0 {
					t.Errorf("after the command and the button: vc %v counters %+v, want [0,1], nothing applied", st.VC, c)
				}
				noEventSince(t, ctl, vc(0, 1))

				// Three failures, one ERROR line; a minute later the retry
				// that fails logs the next one, counting three failures.
				errLines := func() []string {
					var out []string
					for _, l := range strings.Split(d.logs.String(), "\n") {
						if strings.Contains(l, "level=ERROR") && strings.Contains(l, "cannot save the state") {
							out = append(out, l)
						}
					}
					return out
				}
				if n := len(errLines()); n != 1 {
					t.Errorf("%d ERROR lines for three failures in a minute, want 1", n)
				}
				d.clock.Advance(time.Minute)
				testenv.WaitFor(t, "the next ERROR line", func() bool { return len(errLines()) == 2 })
				if l := errLines()[1]; !strings.Contains(l, "failures=3") {
					t.Errorf("second ERROR line %q, want failures=3 (command, button, retry)", l)
				}

				// The disk has room again: the next retry saves.
				if !d.clock.WaitPending(2, testenv.WaitTimeout) { // telemetry and the retry
					t.Fatal("no retry timer")
				}
				store.fail(nil)
				d.clock.Advance(DefaultSaveRetry)
				// Resync: the state again at [0,2], then the retained
				// Command [1,0] merged and applied: [1,3], sent at [1,4].
				ev, _ := ctl.waitEvent(vc(1, 4))
				checkProp(t, ev.Props, protocol.PropSetpoint, 25.0, vc(1, 0))
				st = d.status()
				if _, ok := storageAlert(st); ok {
					t.Errorf("alert still raised after a save: %+v", st.Alerts)
				}
				if got := d.therm.Settings(); got.SetpointC != 25 {
					t.Errorf("thermostat settings %+v, want the command's setpoint", got)
				}
				d.set(map[string]any{protocol.PropSetpoint: 22.0})
				ev, _ = ctl.waitEvent(vc(1, 5))
				checkProp(t, ev.Props, protocol.PropSetpoint, 22.0, vc(1, 5))
				if got, err := d.store.Load(); err != nil || got.Replica.VC != vc(1, 5) {
					t.Errorf("stored state %+v, %v; want clock [1,5]", got.Replica, err)
				}
			})
		}
	})
}

// TestFirstBootUnwritable: a first boot (no state) on a state directory
// that cannot be written still starts: the thermostat runs on the
// defaults, rejoining, with the alert raised; what it hears is not applied
// and it sends no Event. Once the directory takes the state, it saves it
// and gets the retained Command again, and a live Command ends the rejoin.
func TestFirstBootUnwritable(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		for _, tc := range storageErrors {
			t.Run(tc.name, func(t *testing.T) {
				id := "first-" + tc.name + "-" + e.name
				ctl := newController(t, e, id)
				ctl.command(`{"v":1,"vc":[1,0],"props":{"setpoint_c":{"val":25,"w":[1,0]}},"src":"controller"}`, true)
				store := &failingStore{err: tc.err}
				d := startDevice(t, e, id, t.TempDir(), nil, devOpts{wrap: func(s Store) Store { store.Store = s; return store }})
				if got := d.agent.Settings(); got != control.DefaultSettings {
					t.Errorf("starting settings %+v, want the defaults", got)
				}
				if _, ok := storageAlert(d.status()); !ok {
					t.Errorf("no storage_error alert at start: %+v", d.status().Alerts)
				}

				// The retained Command, then a live greeting: neither is
				// applied, and the device stays rejoining on the defaults.
				testenv.WaitFor(t, "the retained command received", func() bool { return d.agent.Counters().Received >= 1 })
				ctl.command(`{"v":1,"vc":[2,0],"props":{},"src":"controller"}`, false)
				testenv.WaitFor(t, "the greeting received", func() bool { return d.agent.Counters().Received >= 2 })
				st := d.status()
				if !st.Rejoining || st.VC != vc(0, 0) || st.Effective[protocol.PropSetpoint] != 20.0 || st.Effective[protocol.PropMode] != "off" {
					t.Errorf("status %+v, want rejoining at [0,0] on the defaults", st)
				}
				ctx, cancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
				defer cancel()
				if err := d.agent.Set(ctx, map[string]any{protocol.PropMode: "heat"}); !errors.Is(err, tc.err) {
					t.Errorf("Set = %v, want %v", err, tc.err)
				}
				noEventSince(t, ctl)

				if !d.clock.WaitPending(3, testenv.WaitTimeout) { // telemetry, sync timeout, retry
					t.Fatal("no retry timer")
				}
				store.fail(nil)
				d.clock.Advance(DefaultSaveRetry)
				testenv.WaitFor(t, "the retained command applied after the save", func() bool {
					st := d.status()
					_, alert := storageAlert(st)
					return !alert && st.Rejoining && st.Effective[protocol.PropSetpoint] == 25.0
				})
				if _, err := d.store.Load(); err != nil {
					t.Errorf("no state saved: %v", err)
				}
				// [1,1] after the merge; the live greeting [2,0] ends the
				// wait: [2,2], and the Event goes out at [2,3].
				ctl.command(`{"v":1,"vc":[2,0],"props":{},"src":"controller"}`, false)
				ev, _ := ctl.waitEvent(vc(2, 3))
				checkProp(t, ev.Props, protocol.PropSetpoint, 25.0, vc(1, 0))
			})
		}
	})
}

// TestConnectWhileUnwritable: the Event a connect sends carries a clock
// tick that must be saved first. If it cannot be, the device stays
// connected (status online, telemetry with the alert) but sends no Event;
// the Event goes out once the state is saved again.
func TestConnectWhileUnwritable(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		id := "connect-" + e.name
		ctl := newController(t, e, id)
		store := &failingStore{err: syscall.ENOSPC}
		d := startDevice(t, e, id, t.TempDir(), fresh(), devOpts{wrap: func(s Store) Store { store.Store = s; return store }})
		ctl.WaitPayload(t, protocol.Topic(root, id, protocol.KindStatus), `{"v":1,"online":true}`)
		ctl.WaitMatch(t, "telemetry with the alert", func(m testenv.Message) bool {
			return m.Topic == protocol.Topic(root, id, protocol.KindTelemetry) && strings.Contains(string(m.Payload), `"alerts":["storage_error"]`)
		})
		noEventSince(t, ctl)
		if st := d.status(); !st.Connected || st.VC != vc(0, 0) {
			t.Errorf("status %+v, want connected at [0,0]", st)
		}

		if !d.clock.WaitPending(2, testenv.WaitTimeout) { // telemetry and the retry
			t.Fatal("no retry timer")
		}
		store.fail(nil)
		d.clock.Advance(DefaultSaveRetry)
		ctl.waitEvent(vc(0, 1))
	})
}
