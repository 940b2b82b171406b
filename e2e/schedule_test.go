package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/protocol"
)

// TestWeekProgramFromTheCommandLine drives the real binaries as a person
// would: a week program given at the board with `thermostat set
// --schedule`, reaching the controller; the holiday button
// (`controllerlite set --all --preset away`) reaching every board, the
// preset's temperature with it; and bad input refused with the reason.
func TestWeekProgramFromTheCommandLine(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	w := newBareWorld(t, embedded)
	ctl := startBinController(t, w, t.TempDir())
	d1 := newBinThermostat(t, w, "d1").start()
	d2 := newBinThermostat(t, w, "d2").start()
	d1.synced()
	d2.synced()

	week := filepath.Join(t.TempDir(), "week.yaml")
	if err := os.WriteFile(week, []byte(`enabled: true
tz: Asia/Tokyo
week:
  mon: [{at: "06:30", preset: home}, {at: "22:00", setpoint_c: 17.5}]
  thu: [{at: "07:00", setpoint_c: 20}]
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out := command(t, d1.bin, "set", "--control-socket", d1.socket, "--schedule", week)
	if !strings.Contains(out, "schedule enabled true") {
		t.Errorf("thermostat set --schedule said %q", out)
	}
	// The agent works out the next entry (and applies the one in force)
	// right after the write: wait for it, then for both sides to agree.
	nextEntry := func(want bool) {
		t.Helper()
		eventually(t, fmt.Sprintf("d1's status shows a next entry: %v", want), func() (bool, string) {
			st, err := d1.status()
			if err != nil {
				return false, err.Error()
			}
			return (st.Next != nil) == want, fmt.Sprintf("next %+v", st.Next)
		})
	}
	nextEntry(true)
	st, c := d1.synced()
	if s, ok := c.Props.Schedule(); !ok || s.TZ != "Asia/Tokyo" || len(s.Week["mon"]) != 2 {
		t.Fatalf("the controller holds schedule %+v", c.Props[protocol.PropSchedule])
	}
	if st.Next == nil {
		t.Error("thermostat status shows no next entry for an enabled schedule")
	}
	// The entry in force was applied by the device at once (src schedule):
	// the setpoint is one of the program's.
	if sp, _ := st.Props.Setpoint(); sp != 21 && sp != 17.5 && sp != 20 {
		t.Errorf("setpoint %v after the schedule was written, want the entry in force", sp)
	}

	// The holiday button.
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "--all", "--preset", "away")
	for _, d := range []*binThermostat{d1, d2} {
		st, _ := d.synced()
		sp, _ := st.Props.Setpoint()
		p, _ := st.Props.Preset()
		if p != "away" || sp != 16 {
			t.Errorf("%s after --all --preset away: preset %q setpoint %v, want away at 16", d.id, p, sp)
		}
	}
	command(t, ctl.bin, "set", "--http", ctl.apiAddr, "d1", "--schedule-enabled", "false")
	d1.synced()
	nextEntry(false)

	// Bad input: an undefined preset and a bad schedule are refused with
	// the reason (HTTP 400; the CLI exits 1), and change nothing.
	before := w.mustCtl("d1")
	for _, args := range [][]string{
		{"set", "--http", ctl.apiAddr, "d1", "--preset", "sauna"},
	} {
		cmd := exec.Command(ctl.bin, args...)
		b, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(b), `preset "sauna" is not defined`) {
			t.Errorf("%v: %v %s", args, err, b)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	_, err := w.api.Set(ctx, "d1", map[string]any{"schedule": map[string]any{"enabled": true, "week": map[string]any{"mon": []any{map[string]any{"at": "7:00", "setpoint_c": 20.0}}}}})
	var apiErr *api.Error
	if !errors.As(err, &apiErr) || apiErr.Status != http.StatusBadRequest || !strings.Contains(err.Error(), "not HH:MM") {
		t.Errorf("PUT of a bad schedule: %v, want 400 naming the problem", err)
	}
	if after := w.mustCtl("d1"); after.VC != before.VC {
		t.Errorf("refused writes moved the clock from %v to %v", before.VC, after.VC)
	}
}
