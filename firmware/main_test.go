package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// bin is the thermostat binary built once for these tests, with a version
// stamped in as the release build does.
var bin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "thermostat-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bin = filepath.Join(dir, "thermostat")
	build := exec.Command("go", "build", "-o", bin,
		"-ldflags", "-X main.version=1.2.3-test -X main.commit=abc1234 -X main.date=2026-11-24T17:00:00Z", ".")
	build.Stdout, build.Stderr = os.Stdout, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build thermostat:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// thermostat runs the binary to completion and returns its output.
func thermostat(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.String(), e.String(), err
}

func TestVersion(t *testing.T) {
	out, _, err := thermostat(t, "version")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"1.2.3-test", "abc1234", "2026-11-24T17:00:00Z"} {
		if !strings.Contains(out, want) {
			t.Errorf("version output %q lacks %q", out, want)
		}
	}
}

// TestHelpEverywhere: -h on every command prints its usage and exits 0,
// as in controllerlite.
func TestHelpEverywhere(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-h"}, "Usage: thermostat COMMAND"},
		{[]string{"help"}, "Usage: thermostat COMMAND"},
		{[]string{"run", "-h"}, "Usage: thermostat run"},
		{[]string{"set", "-h"}, "Usage: thermostat set"},
		{[]string{"status", "-h"}, "Usage: thermostat status"},
		{[]string{"csr", "-h"}, "thermostat csr"},
		{[]string{"version", "-h"}, "thermostat "},
		{[]string{"service", "-h"}, "thermostat service"},
		{[]string{"service", "status", "-h"}, "thermostat service"},
		{[]string{"install", "-h"}, "thermostat install"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			stdout, stderr, err := thermostat(t, tc.args...)
			if err != nil {
				t.Fatalf("%v; stderr:\n%s", err, stderr)
			}
			if !strings.Contains(stdout+stderr, tc.want) {
				t.Errorf("output lacks %q:\n%s%s", tc.want, stdout, stderr)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		code int
		want string
	}{
		{nil, 2, "Usage: thermostat COMMAND"},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"run", "--no-such-flag"}, 2, "flag provided but not defined"},
		{[]string{"run", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"run", "--hal", "sim", "--config", "/nonexistent/config.yaml"}, 1, "/nonexistent/config.yaml"},
		{[]string{"run", "--hal", "sim"}, 1, "no broker given"},
		{[]string{"run", "--hal", "sim", "--broker", "mqtt://b:1883"}, 1, "plain-text"},
		{[]string{"set"}, 2, "give --setpoint, --mode, --preset, --schedule or --schedule-enabled"},
		{[]string{"status", "extra"}, 2, `unexpected argument "extra"`},
		{[]string{"service"}, 2, "thermostat service install|"},
		{[]string{"service", "frobnicate"}, 2, "thermostat service install|"},
		{[]string{"set", "--setpoint", "NaN"}, 1, "out of range"},
		{[]string{"set", "--mode", "warm"}, 1, `"warm" is not one of`},
	}
	for _, tc := range tests {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			_, stderr, err := thermostat(t, tc.args...)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != tc.code {
				t.Fatalf("exit %v, want code %d; stderr:\n%s", err, tc.code, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr lacks %q:\n%s", tc.want, stderr)
			}
		})
	}
}

// proc is a thermostat run as a subprocess.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	stderr string // file with its log
}

// device is the files of one thermostat under test.
type device struct {
	id, certFile, keyFile, caFile, stateDir, socket, url string
}

func newDevice(t *testing.T, pki *testenv.PKI, url, id string) device {
	dir := t.TempDir()
	cert, key := pki.Client(t, id)
	return device{id: id, certFile: cert, keyFile: key, caFile: pki.CAFile, url: url,
		stateDir: filepath.Join(dir, "state"), socket: filepath.Join(dir, "ctl.sock")}
}

func (d device) args(extra ...string) []string {
	return append([]string{"run", "--hal", "sim", "--broker", d.url, "--ca", d.caFile, "--cert", d.certFile, "--key", d.keyFile,
		"--state-dir", d.stateDir, "--control-socket", d.socket, "--sync-timeout", "300ms", "--keep-alive", "2s", "--log-level", "debug"}, extra...)
}

func start(t *testing.T, args ...string) *proc {
	t.Helper()
	return startEnv(t, nil, args...)
}

// startEnv is start with extra environment variables.
func startEnv(t *testing.T, env []string, args ...string) *proc {
	t.Helper()
	logf, err := os.CreateTemp(t.TempDir(), "thermostat-*.log")
	if err != nil {
		t.Fatal(err)
	}
	p := &proc{t: t, cmd: exec.Command(bin, args...), done: make(chan struct{}), stderr: logf.Name()}
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.Env = append(os.Environ(), env...)
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		p.err = p.cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			b, _ := os.ReadFile(p.stderr)
			t.Logf("thermostat log (%v):\n%s", p.cmd.Args, b)
		}
	})
	return p
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.stderr)
	return string(b)
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
}

// term stops it with SIGTERM and returns how it exited.
func (p *proc) term() error {
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(testenv.WaitTimeout):
		p.t.Fatal("thermostat did not stop on SIGTERM")
		return nil
	}
}

// status asks the running agent for its status.
func status(socket string) (agent.Status, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := localctl.Do(ctx, socket, localctl.Request{Op: localctl.OpStatus})
	if err != nil {
		return agent.Status{}, err
	}
	var st agent.Status
	err = json.Unmarshal(resp.Status, &st)
	return st, err
}

// waitStatus polls the agent until cond holds for its status.
func waitStatus(t *testing.T, p *proc, socket, what string, cond func(agent.Status) bool) agent.Status {
	t.Helper()
	deadline := time.Now().Add(testenv.WaitTimeout)
	for {
		st, err := status(socket)
		if err == nil && cond(st) {
			return st
		}
		if p.exited() {
			t.Fatalf("thermostat exited (%v) while waiting for %s", p.err, what)
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s (last status %+v, %v)", what, st, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a condition with a deadline
	}
}

func isEvent(id string, pred func(protocol.Message) bool) func(testenv.Message) bool {
	return func(m testenv.Message) bool {
		ev, _, err := protocol.DecodeMessage(m.Payload)
		return m.Topic == protocol.Topic(protocol.DefaultRoot, id, protocol.KindEvent) && err == nil && pred(ev)
	}
}

// TestRunSetStatusStop: the binary against a real Mosquitto: `set` and
// `status` talk to the running agent, a bad value is refused with the
// reason, the change reaches the broker, and SIGTERM stops it cleanly with
// status offline and the state saved.
func TestRunSetStatusStop(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	ctl := pki.Connect(t, m.URL(), protocol.ControllerID)
	ctl.Subscribe(t, "thermo/s1/#", 1)
	d := newDevice(t, pki, m.URL(), "s1")

	// Flags win over the file; the file sets what the flags do not.
	cfgFile := filepath.Join(t.TempDir(), "config.yaml")
	os.WriteFile(cfgFile, []byte("telemetry_interval: 1h\nkeep_alive: 30s\ncontrol:\n  interval: 200ms\n"), 0o644)
	p := start(t, d.args("--config", cfgFile)...)
	// A first boot rejoins; nobody answers, so it resumes after the sync timeout.
	waitStatus(t, p, d.socket, "connected and rejoined", func(s agent.Status) bool { return s.Connected && !s.Rejoining })

	out, stderr, err := thermostat(t, "set", "--control-socket", d.socket, "--setpoint", "22.5", "--mode", "heat")
	if err != nil || !strings.Contains(out, "setpoint_c 22.5, mode heat, preset none: saved and sent to the controller") {
		t.Fatalf("set: %v\n%s%s", err, out, stderr)
	}
	ctl.WaitMatch(t, "the local change", isEvent("s1", func(ev protocol.Message) bool {
		sp, _ := ev.Props.Setpoint()
		return sp == 22.5 && ev.Src == protocol.SrcLocal
	}))

	for _, bad := range [][]string{{"--setpoint", "35.5"}, {"--setpoint", "4"}} {
		_, stderr, err := thermostat(t, append([]string{"set", "--control-socket", d.socket}, bad...)...)
		if err == nil || !strings.Contains(stderr, "out of range 5.0 to 35.0") {
			t.Errorf("set %v: %v %s", bad, err, stderr)
		}
	}

	out, _, err = thermostat(t, "status", "--control-socket", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	var st agent.Status
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("status is not JSON: %v\n%s", err, out)
	}
	if st.ID != "s1" || st.Effective["setpoint_c"] != 22.5 || st.Effective["mode"] != "heat" || !st.Connected || st.Rejoining ||
		st.Props["setpoint_c"].W != st.Props["mode"].W || st.VC[1] == 0 || st.TempC == nil {
		t.Errorf("status %s", out)
	}
	for _, key := range []string{`"props"`, `"vc"`, `"temp_c"`, `"outputs"`, `"connected"`, `"rejoining"`, `"sensor_ok"`} {
		if !strings.Contains(out, key) {
			t.Errorf("status lacks %s:\n%s", key, out)
		}
	}

	ctl.Reset()
	if err := p.term(); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log())
	}
	ctl.WaitPayload(t, "thermo/s1/status", `{"v":1,"online":false}`)
	if _, err := os.Stat(d.socket); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("control socket left behind: %v", err)
	}
	if !strings.Contains(p.log(), "outputs off") {
		t.Errorf("no word of the outputs going off in the log")
	}

	// The state survived: a restart resumes with the setpoint and no rejoin.
	p = start(t, d.args()...)
	// Connected and its reconnect Event sent (the send moves the clock).
	st2 := waitStatus(t, p, d.socket, "restarted", func(s agent.Status) bool { return s.Connected && s.Counters.EventsSent > 0 })
	if st2.Rejoining || st2.Effective["setpoint_c"] != 22.5 || !st.VC.LessEq(st2.VC) || st2.VC == st.VC {
		t.Errorf("after restart %+v, before %+v", st2, st)
	}
}

// TestRunRefusesCorruptState: a state file that cannot be read stops the
// thermostat with instructions, never a silent fresh start.
func TestRunRefusesCorruptState(t *testing.T) {
	pki := testenv.NewPKI(t)
	d := newDevice(t, pki, "mqtts://localhost:1", "c1")
	if err := os.MkdirAll(d.stateDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stateFile := filepath.Join(d.stateDir, "state.json")
	os.WriteFile(stateFile, []byte(`{"format":1,"device":{"replica":`), 0o600)
	_, stderr, err := thermostat(t, d.args()...)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit %v", err)
	}
	for _, want := range []string{"corrupt", "mv " + stateFile, "rejoins"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr)
		}
	}
	if b, _ := os.ReadFile(stateFile); string(b) != `{"format":1,"device":{"replica":` {
		t.Error("the corrupt file was changed")
	}
}

func TestCheckRunArgs(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"--broker", "mqtts://b:8883", "--hal=sim", "--keep-alive", "5s"}, true},
		{[]string{"--config", "/etc/thermostat/config.yaml"}, true},
		{[]string{"--brokr", "mqtts://b"}, false},
		{[]string{"--keep-alive", "soon"}, false},
		{[]string{"stray"}, false},
	} {
		if err := checkRunArgs(tc.args); (err == nil) != tc.ok {
			t.Errorf("checkRunArgs(%q) = %v, want ok=%v", tc.args, err, tc.ok)
		}
	}
}
