package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// saveRetryWait bounds how long a thermostat takes to notice by itself
// that its disk takes the state again: its retries back off to one every
// 30 s.
const saveRetryWait = 45 * time.Second

// TestStateDirFullOrReadOnly is issue 9's third defect against the real
// binaries: a full (small tmpfs) or read-only (bind mount remounted ro)
// state directory used to make `thermostat set` fail and then the whole
// thermostat exit with the relay off. Now the thermostat keeps running and
// heating on its last saved settings; `thermostat set` fails with the
// reason and a non-zero exit; the status and the controller show
// storage_error; a controller write is not applied meanwhile; a restart
// runs too (it used to die at its first connect). Once the
// disk has room or is writable again the thermostat notices by itself:
// the alert clears, the controller's write arrives, and a new local set
// works and reaches the controller.
func TestStateDirFullOrReadOnly(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	for _, tc := range []struct {
		name, reason string
		// prepare mounts the disk at dir before the thermostat starts and
		// returns how to break it and how to repair it.
		prepare func(t *testing.T, dir string) (breakIt, repair func())
	}{
		{"full", "no space left on device", func(t *testing.T, dir string) (func(), func()) {
			testenv.MountTmpfs(t, dir, 64<<10)
			var filler string
			return func() { filler = testenv.FillDisk(t, dir) }, func() {
				if err := os.Remove(filler); err != nil {
					t.Fatal(err)
				}
			}
		}},
		{"read-only", "read-only file system", func(t *testing.T, dir string) (func(), func()) {
			setRO := testenv.BindMount(t, t.TempDir(), dir)
			return func() { setRO(true) }, func() { setRO(false) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			eachBroker(t, func(t *testing.T, kind brokerKind) {
				w := newBareWorld(t, kind)
				ctl := startBinController(t, w, t.TempDir())
				d := newBinThermostat(t, w, "d1", "--sim-speed", "60")
				breakIt, repair := tc.prepare(t, filepath.Join(d.dir, "state"))
				d.start()
				d.synced()
				command(t, d.bin, "set", "--control-socket", d.socket, "--mode", "heat", "--setpoint", "30")
				d.synced()
				eventually(t, "the heat on", func() (bool, string) {
					st, err := d.status()
					return err == nil && st.Outputs.Heat, fmt.Sprintf("%+v %v", st.Outputs, err)
				})

				breakIt()
				out, err := exec.Command(d.bin, "set", "--control-socket", d.socket, "--mode", "off").CombinedOutput()
				if err == nil || !strings.Contains(string(out), "cannot save its state") || !strings.Contains(string(out), tc.reason) {
					t.Fatalf("thermostat set on a %s disk = %v:\n%s\nwant a failure saying why", tc.name, err, out)
				}
				st, err := d.status()
				if err != nil {
					t.Fatal(err)
				}
				if !alerted(st.Alerts, protocol.AlertStorageError) || st.Effective[protocol.PropMode] != protocol.ModeHeat {
					t.Fatalf("status after the refused set: alerts %+v effective %v; want storage_error, still heating", st.Alerts, st.Effective)
				}
				eventually(t, "the controller to show the alert", func() (bool, string) {
					c, err := w.ctl(d.id)
					return err == nil && alerted(c.Alerts, protocol.AlertStorageError), fmt.Sprintf("%+v %v", c.Alerts, err)
				})
				// The control loop runs on: heat on, the room warming.
				first := st.TempC
				eventually(t, "the room to warm with the heat on", func() (bool, string) {
					d.alive()
					st, err := d.status()
					if err != nil || st.TempC == nil || first == nil {
						return false, fmt.Sprint(err)
					}
					return st.Outputs.Heat && *st.TempC > *first+0.2, fmt.Sprintf("heat=%v %.2f °C (from %.2f)", st.Outputs.Heat, *st.TempC, *first)
				})
				// A write from the controller is not applied meanwhile.
				command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--json", d.id, "--setpoint", "18.5")
				eventually(t, "the thermostat to receive the controller's write", func() (bool, string) {
					st, err := d.status()
					return err == nil && st.Counters.Received > 0, fmt.Sprintf("%+v %v", st.Counters, err)
				})
				if st, _ := d.status(); st.Effective[protocol.PropSetpoint] != 30.0 {
					t.Errorf("effective %v while the state cannot be saved, want the saved setpoint 30", st.Effective)
				}
				if log := d.logText(); strings.Count(log, `level=ERROR msg="cannot save the state`) != 1 {
					t.Errorf("want one ERROR line for the failures of the first minute:\n%s", log)
				}

				// A restart on the broken disk runs too; it used to die at
				// its first connect. It heats on what it had saved.
				d.kill9()
				d.start()
				eventually(t, "the restarted thermostat to run, heating, with the alert", func() (bool, string) {
					st, err := d.status()
					return err == nil && st.Connected && alerted(st.Alerts, protocol.AlertStorageError) &&
							st.Effective[protocol.PropMode] == protocol.ModeHeat && st.Outputs.Heat,
						fmt.Sprintf("connected=%v alerts=%+v effective=%v outputs=%+v %v", st.Connected, st.Alerts, st.Effective, st.Outputs, err)
				})

				repair()
				var last agent.Status
				deadline := time.Now().Add(saveRetryWait)
				for {
					d.alive()
					st, err := d.status()
					if err == nil {
						last = st
						if !alerted(st.Alerts, protocol.AlertStorageError) && st.Effective[protocol.PropSetpoint] == 18.5 {
							break
						}
					}
					if time.Now().After(deadline) {
						t.Fatalf("the thermostat did not resume in %v: %+v", saveRetryWait, last)
					}
					time.Sleep(100 * time.Millisecond) // polling the thermostat's status with a deadline
				}
				command(t, d.bin, "set", "--control-socket", d.socket, "--setpoint", "21.5")
				st, c := d.synced()
				if sp, _ := setpoint(c.Props); sp != 21.5 || alerted(st.Alerts, protocol.AlertStorageError) {
					t.Errorf("after the repair: controller %v, thermostat alerts %+v", c.Props, st.Alerts)
				}
			})
		})
	}
}
