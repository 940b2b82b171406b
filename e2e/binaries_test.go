package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/protocol"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds thermostat and controllerlite once per test binary run.
func binaries(t *testing.T) (thermostat, controllerlite string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "thermo-e2e-bin-")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{{"thermostat", "../firmware"}, {"controllerlite", "../controllerlite"}} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b[0]), b[1]).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "thermostat"), filepath.Join(binDir, "controllerlite")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// process is a binary run by a test, its stderr (the log) in a file and
// its stdout in lines.
type process struct {
	t     *testing.T
	name  string
	cmd   *exec.Cmd
	log   string
	lines chan string
	done  chan struct{}
}

func spawn(t *testing.T, name string, args ...string) *process {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), name+"-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &process{t: t, name: name, cmd: exec.Command(args[0], args[1:]...), log: logf.Name(),
		lines: make(chan string, 100), done: make(chan struct{})}
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = logf
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case p.lines <- sc.Text():
			default: // nobody reads it any more
			}
		}
		p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill9()
		if t.Failed() {
			b, _ := os.ReadFile(p.log)
			t.Logf("%s log (%s):\n%s", name, strings.Join(p.cmd.Args, " "), b)
		}
	})
	return p
}

// line waits for a stdout line starting with prefix and returns the rest.
func (p *process) line(prefix string) string {
	p.t.Helper()
	deadline := time.After(waitTimeout)
	for {
		select {
		case l := <-p.lines:
			if rest, ok := strings.CutPrefix(l, prefix); ok {
				return strings.TrimSpace(rest)
			}
		case <-p.done:
			p.t.Fatalf("%s exited (%v) before printing %q", p.name, p.cmd.ProcessState, prefix)
		case <-deadline:
			p.t.Fatalf("%s did not print %q", p.name, prefix)
		}
	}
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *process) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// command runs a binary to completion and returns its stdout.
func command(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var stderr strings.Builder
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s: %v\n%s%s", strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}

// TestBinariesSurviveKill9 runs the real binaries, so that process
// boundaries are real: thermostat and controllerlite are killed with
// SIGKILL and restarted from their state. A command sent (with
// `controllerlite set`) while the thermostat is dead reaches it when it is
// back; a change made with `thermostat set` while the broker is dead
// survives a SIGKILL of the thermostat and reaches the controller when the
// broker is back. With the embedded broker, "the broker is dead" is
// controllerlite killed.
func TestBinariesSurviveKill9(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	eachBroker(t, func(t *testing.T, kind brokerKind) {
		w := newBareWorld(t, kind)
		dataDir := t.TempDir()
		ctl := startBinController(t, w, dataDir)
		serve := func() { ctl = startBinController(t, w, dataDir) }
		th := newBinThermostat(t, w, "d1")
		thermostatBin, controllerBin, socket := th.bin, ctl.bin, th.socket
		run := func() { th.start() }
		status := th.status
		waitStatus := func(what string, cond func(agent.Status) bool) agent.Status {
			t.Helper()
			var st agent.Status
			eventually(t, "thermostat status: "+what, func() (bool, string) {
				var err error
				st, err = status()
				return err == nil && cond(st), fmt.Sprintf("%+v %v", st, err)
			})
			return st
		}
		synced := th.synced
		run()
		synced()

		// SIGKILL the thermostat: the broker publishes its will.
		th.kill9()
		eventually(t, "the controller to see d1 offline (its will)", func() (bool, string) {
			c, err := w.ctl("d1")
			return err == nil && !c.Online, fmt.Sprintf("%+v %v", c, err)
		})
		var c fleet.Device
		if err := json.Unmarshal([]byte(command(t, controllerBin, "set", "--http", ctl.apiAddr, "--json", "d1", "--setpoint", "19", "--mode", "cool")), &c); err != nil {
			t.Fatal(err)
		}
		if sp, w := setpoint(c.Props); sp != 19 || w != c.VC || c.Online {
			t.Fatalf("controllerlite set: %+v", c)
		}
		run()
		st, _ := synced()
		if sp, w := setpoint(st.Props); sp != 19 || w != c.VC || st.Effective[protocol.PropMode] != protocol.ModeCool {
			t.Fatalf("restarted thermostat: %v effective %v, want setpoint 19@%v and mode cool", st.Props, st.Effective, c.VC)
		}

		// Kill the broker.
		switch kind {
		case mosquitto:
			w.mq.Kill()
		case embedded:
			ctl.kill9()
		}
		before := waitStatus("disconnected", func(st agent.Status) bool { return !st.Connected })
		out := command(t, thermostatBin, "set", "--control-socket", socket, "--setpoint", "24.5")
		if !strings.Contains(out, "the broker is unreachable, sent when it is back") {
			t.Errorf("thermostat set while the broker is down said %q", out)
		}
		stamp := tick(before.VC, devSide) // a write that waits
		check := func(st agent.Status) {
			t.Helper()
			if sp, w := setpoint(st.Props); sp != 24.5 || w != stamp || st.VC != stamp || st.Effective[protocol.PropSetpoint] != 24.5 {
				t.Fatalf("thermostat %v %v effective %v, want 24.5@%v in effect", st.VC, st.Props, st.Effective, stamp)
			}
		}
		st, err := status()
		if err != nil {
			t.Fatal(err)
		}
		check(st)
		// The change was saved before `thermostat set` returned: a SIGKILL
		// now loses nothing.
		th.kill9()
		run()
		check(waitStatus("running again", func(agent.Status) bool { return true }))

		switch kind {
		case mosquitto:
			w.mq.Start()
		case embedded:
			serve()
			// Killed and restarted on its store: it still knows d1 as it did.
			if got, err := w.ctl("d1"); err != nil || got.Props[protocol.PropMode].Val != protocol.ModeCool {
				t.Fatalf("controller after SIGKILL: %+v %v", got, err)
			}
		}
		st, c = synced()
		if sp, w := setpoint(c.Props); sp != 24.5 || w != stamp {
			t.Errorf("the controller has setpoint %v@%v, want the offline write 24.5@%v", sp, w, stamp)
		}
		if st.VC[devSide] <= stamp[devSide] {
			t.Errorf("thermostat clock %v: its reconnect Event should have been a send after %v", st.VC, stamp)
		}
		// Telemetry from the simulated room shows in the API.
		eventually(t, "d1's telemetry in the API", func() (bool, string) {
			c, err := w.ctl("d1")
			if err != nil || c.Telemetry == nil || c.LastSeen == nil {
				return false, fmt.Sprintf("%+v %v", c, err)
			}
			tel, err := protocol.DecodeTelemetry(c.Telemetry)
			return err == nil && tel.SensorOK && tel.TempC != nil, fmt.Sprintf("%s %v", c.Telemetry, err)
		})

		// SIGKILL controllerlite and wipe its store: it rebuilds d1 from
		// what the broker retained (with the embedded broker, what its own
		// store kept through the SIGKILL).
		ctl.kill9()
		if err := os.Remove(filepath.Join(dataDir, store.FileName)); err != nil {
			t.Fatal(err)
		}
		serve()
		_, rebuilt := synced()
		if !sameProps(rebuilt.Props, c.Props) {
			t.Errorf("controller rebuilt after SIGKILL and a wiped store with %v, want %v", rebuilt.Props, c.Props)
		}
	})
}
