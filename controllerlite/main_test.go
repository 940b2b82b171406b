package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/internal/cli"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// syncBuffer is an output a running command writes while the test reads.
type syncBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	notify chan struct{}
}

func newSyncBuffer() *syncBuffer { return &syncBuffer{notify: make(chan struct{}, 1)} }

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	n, err := s.b.Write(p)
	s.mu.Unlock()
	select {
	case s.notify <- struct{}{}:
	default:
	}
	return n, err
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// waitMatch waits until the output matches re and returns the first
// submatch.
func (s *syncBuffer) waitMatch(t *testing.T, re *regexp.Regexp, done <-chan error) string {
	t.Helper()
	deadline := time.After(testenv.WaitTimeout)
	for {
		if m := re.FindStringSubmatch(s.String()); m != nil {
			return m[1]
		}
		select {
		case <-s.notify:
		case err := <-done:
			t.Fatalf("serve returned %v before printing %s; output:\n%s", err, re, s.String())
		case <-deadline:
			t.Fatalf("no %s in the output:\n%s", re, s.String())
		}
	}
}

var (
	httpLine   = regexp.MustCompile(`(?m)^controllerlite: http listening on (\S+)$`)
	brokerLine = regexp.MustCompile(`(?m)^controllerlite: mqtt broker listening on (\S+)$`)
	readyLine  = regexp.MustCompile(`(?m)^controllerlite: (ready)$`)
)

// serving is `controllerlite serve` run in-process.
type serving struct {
	httpAddr, brokerURL string
	stdout, stderr      *syncBuffer
}

func serve(t *testing.T, pki *testenv.PKI, extra ...string) *serving {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	s := &serving{stdout: newSyncBuffer(), stderr: newSyncBuffer()}
	args := append([]string{"serve", "--ca", pki.CAFile, "--cert", pki.ServerCert, "--key", pki.ServerKey,
		"--data-dir", t.TempDir(), "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0", "--log-level", "debug"}, extra...)
	done := make(chan error, 1)
	go func() { done <- run(ctx, args, s.stdout, s.stderr) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("serve stderr:\n%s", s.stderr.String())
		}
	})
	s.httpAddr = s.stdout.waitMatch(t, httpLine, done)
	_, port, _ := net.SplitHostPort(s.stdout.waitMatch(t, brokerLine, done))
	s.brokerURL = "mqtts://localhost:" + port
	s.stdout.waitMatch(t, readyLine, done)
	return s
}

// runCLI runs a client command and returns its output.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	err := run(context.Background(), args, &out, &errb)
	return out.String() + errb.String(), err
}

func TestCLIAgainstRunningController(t *testing.T) {
	pki := testenv.NewPKI(t)
	s := serve(t, pki)

	out, err := runCLI(t, "devices", "--http", s.httpAddr)
	if err != nil || !strings.Contains(out, "no devices yet") {
		t.Fatalf("devices with none: %v\n%s", err, out)
	}

	d1 := pki.Connect(t, s.brokerURL, "d1")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d1.Publish(t, "thermo/d1/event", 1, true, []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":20,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}}`))
	d1.Publish(t, "thermo/d1/status", 1, true, []byte(`{"v":1,"online":true}`))
	d1.Publish(t, "thermo/d1/telemetry", 0, false, []byte(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":19.87,"heat":true,"cool":false,"sensor_ok":true}`))

	// Wait through the CLI itself until the controller has it all.
	var devs []fleet.Device
	deadline := time.After(testenv.WaitTimeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		out, err = runCLI(t, "devices", "--http", s.httpAddr, "--json")
		// Telemetry decodes as "null" before the first one; Pending
		// holds until the greeting has gone out.
		if err == nil && json.Unmarshal([]byte(out), &devs) == nil && len(devs) == 1 && devs[0].Online &&
			len(devs[0].Telemetry) > 0 && string(devs[0].Telemetry) != "null" && !devs[0].Pending {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("devices --json never showed d1 online with telemetry: %v\n%s", err, out)
		}
	}

	out, err = runCLI(t, "devices", "--http", s.httpAddr)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 2 || strings.Join(strings.Fields(lines[0]), " ") != "ID ONLINE SETPOINT MODE PRESET TEMP ACTION NEXT ALERTS CLOCK LAST SEEN" {
		t.Fatalf("table:\n%s", out)
	}
	// The greeting made the clock [2,1].
	if f := strings.Fields(lines[1]); len(f) < 10 || strings.Join(f[:10], " ") != "d1 yes 20.0 heat - 19.9 heating - - [2,1]" {
		t.Fatalf("row: %q", lines[1])
	}

	// Flags after the device, as the usage shows.
	out, err = runCLI(t, "set", "d1", "--setpoint", "21", "--mode", "cool", "--http", s.httpAddr)
	if err != nil || !strings.Contains(out, "21.0") || !strings.Contains(out, "cool") || !strings.Contains(out, "[3,1]") {
		t.Fatalf("set: %v\n%s", err, out)
	}
	d1.WaitMatch(t, "the command", func(m testenv.Message) bool {
		cm, _, err := protocol.DecodeMessage(m.Payload)
		sp, _ := cm.Props.Setpoint()
		return err == nil && cm.VC == protocol.Clock{3, 1} && sp == 21
	})
	out, err = runCLI(t, "set", "--http", s.httpAddr, "--json", "--setpoint", "22.5", "d1")
	var d fleet.Device
	if err != nil || json.Unmarshal([]byte(out), &d) != nil || d.VC != (protocol.Clock{4, 1}) {
		t.Fatalf("set --json: %v\n%s", err, out)
	}

	errs := []struct {
		name string
		args []string
		want string
	}{
		{"out of range", []string{"set", "d1", "--setpoint", "40"}, "out of range 5.0 to 35.0 (HTTP 400)"},
		{"bad mode", []string{"set", "d1", "--mode", "warm"}, `mode "warm" is not one of`},
		{"unknown device", []string{"set", "d9", "--mode", "off"}, `unknown device "d9" (HTTP 404)`},
		{"not a number", []string{"set", "d1", "--setpoint", "warm"}, "not a number"},
		{"nothing to set", []string{"set", "d1"}, "nothing to set"},
		{"no device", []string{"set", "--mode", "off"}, "one DEVICE"},
	}
	for _, tc := range errs {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, append(tc.args, "--http", s.httpAddr)...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q\n%s", err, tc.want, out)
			}
		})
	}
}

func TestCLIToken(t *testing.T) {
	pki := testenv.NewPKI(t)
	tokFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokFile, []byte("tok-123\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := serve(t, pki, "--http-token-file", tokFile)

	if _, err := runCLI(t, "devices", "--http", s.httpAddr); err == nil || !strings.Contains(err.Error(), "HTTP 401") {
		t.Fatalf("without token: %v", err)
	}
	if out, err := runCLI(t, "devices", "--http", s.httpAddr, "--http-token-file", tokFile); err != nil {
		t.Fatalf("with --http-token-file: %v\n%s", err, out)
	}
	t.Setenv(envToken, "tok-123")
	if out, err := runCLI(t, "devices", "--http", s.httpAddr); err != nil {
		t.Fatalf("with %s: %v\n%s", envToken, err, out)
	}
	t.Setenv(envToken, "wrong")
	if _, err := runCLI(t, "devices", "--http", s.httpAddr); err == nil {
		t.Fatal("a wrong token was accepted")
	}
}

func TestCLINotRunning(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	for _, args := range [][]string{{"devices"}, {"set", "d1", "--mode", "off"}} {
		_, err := runCLI(t, append(args, "--http", addr)...)
		if err == nil || !strings.Contains(err.Error(), "is 'controllerlite serve' running") {
			t.Errorf("%v: %v", args, err)
		}
	}
}

func TestServeRefuses(t *testing.T) {
	pki := testenv.NewPKI(t)
	d1Cert, d1Key := pki.Client(t, "d1")
	base := []string{"serve", "--ca", pki.CAFile, "--data-dir", t.TempDir()}
	openPassword := filepath.Join(t.TempDir(), "ha-password")
	if err := os.WriteFile(openPassword, []byte("secret\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chmod(openPassword, 0o644) // past the umask
	srv := []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"open API without token", []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--listen", "127.0.0.1:0", "--http", "0.0.0.0:0"}, "needs a token"},
		{"device cert for --broker", []string{"--cert", d1Cert, "--key", d1Key, "--broker", "mqtts://localhost:8883", "--http", "127.0.0.1:0"}, `CN "controller"`},
		{"empty token file", []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--http-token-file", os.DevNull}, "is empty"},
		{"bad log level", []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--log-level", "loud"}, "--log-level"},
		{"argument", []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "extra"}, "no arguments"},
		{"unknown flag", []string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--nope"}, "not defined"},
		{"--ha-username without --ha-broker", append(srv, "--ha-username", "u"), "need --ha-broker"},
		{"HA password file open to all", append(srv, "--ha-broker", "mqtt://localhost:1883", "--ha-username", "u", "--ha-password-file", openPassword), "chmod o-rwx"},
		{"--ha-ca on a plain broker", append(srv, "--ha-broker", "mqtt://localhost:1883", "--ha-ca", pki.CAFile), "--ha-ca is for an mqtts://"},
		{"--ha-broker not MQTT", append(srv, "--ha-broker", "http://localhost:8123"), "--ha-broker"},
		{"--ha-prefix with a wildcard", append(srv, "--ha-broker", "mqtt://localhost:1883", "--ha-prefix", "ha/+"), "--ha-prefix"},
		{"--broker-client-queue 0", append(srv, "--broker-client-queue", "0"), "--broker-client-queue 0: want 1 packet or more"},
		{"--broker-client-queue not a number", append(srv, "--broker-client-queue", "many"), `invalid value "many" for flag -broker-client-queue`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var out, errb bytes.Buffer
			err := run(context.Background(), append(base, tc.args...), &out, &errb)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err %v, want %q\n%s%s", err, tc.want, out.String(), errb.String())
			}
			if strings.Contains(out.String(), "listening") {
				t.Fatalf("printed a listening line:\n%s", out.String())
			}
		})
	}
}

func TestCommands(t *testing.T) {
	tests := []struct {
		args  []string
		usage bool   // a usage error (exit 2)
		want  string // in the output or the error
	}{
		{[]string{}, true, "a command is required"},
		{[]string{"frobnicate"}, true, `unknown command "frobnicate"`},
		{[]string{"version"}, false, "controllerlite dev (commit none"},
		{[]string{"help"}, false, "Commands:"},
		{[]string{"install", "--bogus"}, false, "install: "}, // refused: not root, no systemd, or the bad flag
		{[]string{"pki"}, true, "a command is required"},
		{[]string{"pki", "frobnicate"}, true, `unknown command "frobnicate"`},
		{[]string{"pki", "device"}, true, "missing device ID"},
		{[]string{"devices", "extra"}, true, "no arguments"},
		{[]string{"devices", "--bogus"}, true, "flag provided but not defined"},
		{[]string{"set", "d1"}, true, "nothing to set"},
		// -h works on every command and is not an error.
		{[]string{"version", "-h"}, false, "controllerlite dev (commit none"},
		{[]string{"serve", "-h"}, false, "Usage: controllerlite serve"},
		{[]string{"devices", "-h"}, false, "Usage: controllerlite devices"},
		{[]string{"set", "-h"}, false, "Usage: controllerlite set"},
		{[]string{"pki", "init", "-h"}, false, "Usage: controllerlite pki init"},
		{[]string{"pki", "-h"}, false, "Commands:"},
		{[]string{"service", "-h"}, false, ""},
		{[]string{"service", "status", "-h"}, false, ""}, // the service usage, on the process's stdout
		{[]string{"service"}, true, "service"},
		{[]string{"service", "frobnicate"}, true, "service"},
	}
	for _, tc := range tests {
		var out, errb bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errb)
		text := out.String() + errb.String()
		if err != nil {
			text += err.Error()
		}
		if !strings.Contains(text, tc.want) || errors.Is(err, cli.ErrUsage) != tc.usage {
			t.Errorf("%v: err %v, output %q; want %q, usage error %v", tc.args, err, text, tc.want, tc.usage)
		}
	}
}

func TestTable(t *testing.T) {
	now := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	seen := now.Add(-90 * time.Second)
	devs := []fleet.Device{
		{ID: "d1", Online: true, VC: protocol.Clock{4, 2}, Pending: true, LastSeen: &seen,
			Props:     protocol.Props{"setpoint_c": {Val: 21.5, W: protocol.Clock{4, 2}}, "mode": {Val: "heat", W: protocol.Clock{0, 1}}},
			Telemetry: json.RawMessage(`{"v":1,"ts":"2026-11-24T17:00:00Z","heat":false,"cool":true,"sensor_ok":false}`)},
		{ID: "d2", Props: protocol.Props{}},
		{ID: "d3", Online: true, VC: protocol.Clock{2, 5}, LastSeen: &seen,
			Props: protocol.Props{"setpoint_c": {Val: 16.0, W: protocol.Clock{2, 5}}, "mode": {Val: "heat", W: protocol.Clock{0, 1}},
				"preset": {Val: "away", W: protocol.Clock{2, 5}}},
			Alerts:    []protocol.Alert{{Code: protocol.AlertStorageError}, {Code: protocol.AlertSensorFault}},
			Telemetry: json.RawMessage(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":17.25,"heat":true,"cool":false,"sensor_ok":true,"action":"heating","next":{"at":"2026-11-25T05:30:00Z","setpoint_c":21,"preset":"home"}}`)},
	}
	var b bytes.Buffer
	if err := writeTable(&b, devs, now); err != nil {
		t.Fatal(err)
	}
	want := []string{
		"ID ONLINE SETPOINT MODE PRESET TEMP ACTION NEXT ALERTS CLOCK LAST SEEN",
		"d1 yes 21.5 heat - - (sensor fault) cooling - - [4,2] (pending) 1m ago",
		"d2 no - - - - - - - [0,0] never",
		"d3 yes 16.0 heat away 17.2 heating " + time.Date(2026, 11, 25, 5, 30, 0, 0, time.UTC).Local().Format("Mon 15:04") + " 21.0 (home) storage_error,sensor_fault [2,5] 1m ago",
	}
	got := strings.Split(strings.TrimSpace(b.String()), "\n")
	for i := range got {
		got[i] = strings.Join(strings.Fields(got[i]), " ")
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("table:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestMain lets the test binary play `controllerlite serve` as a child
// process, for TestKill9.
func TestMain(m *testing.M) {
	if args := os.Getenv("CONTROLLERLITE_TEST_CHILD"); args != "" {
		err := run(context.Background(), strings.Split(args, "\x1f"), os.Stdout, os.Stderr)
		if err != nil {
			os.Stderr.WriteString(err.Error() + "\n")
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestKill9: a controller killed with SIGKILL while remote writes stream
// in restarts with every acknowledged write and a clock that never went
// backwards, and the device still gets the latest write.
func TestKill9(t *testing.T) {
	testenv.SkipIfCannotReexec(t)
	pki := testenv.NewPKI(t)
	dataDir := t.TempDir()
	args := []string{"serve", "--ca", pki.CAFile, "--cert", pki.ServerCert, "--key", pki.ServerKey,
		"--data-dir", dataDir, "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"}
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "CONTROLLERLITE_TEST_CHILD="+strings.Join(args, "\x1f"))
	stdout, stderr := newSyncBuffer(), newSyncBuffer()
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error) // closed when the child has exited
	go func() { cmd.Wait(); close(exited) }()
	defer func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("child stderr:\n%s", stderr.String())
		}
	}()
	httpAddr := stdout.waitMatch(t, httpLine, exited)
	_, port, _ := net.SplitHostPort(stdout.waitMatch(t, brokerLine, exited))
	stdout.waitMatch(t, readyLine, exited)

	d1 := pki.Connect(t, "mqtts://localhost:"+port, "d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":20,"w":[0,1]}}}`))
	c, err := api.NewClient(httpAddr, "")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	waitUntilDevice := time.After(testenv.WaitTimeout)
	for {
		if _, err := c.Device(ctx, "d1"); err == nil {
			break
		}
		select {
		case <-waitUntilDevice:
			t.Fatal("d1 never appeared")
		case <-time.After(2 * time.Millisecond):
		}
	}
	d1.Close()

	// Writes stream in; the child is killed after the 20th is
	// acknowledged, with the next one likely in flight.
	type ack struct {
		sp float64
		vc protocol.Clock
	}
	acks := make(chan ack, 100)
	go func() {
		defer close(acks)
		for i := 0; ; i++ {
			sp := 10 + float64(i%200)/10
			d, err := c.Set(ctx, "d1", map[string]any{"setpoint_c": sp})
			if err != nil {
				return
			}
			acks <- ack{sp, d.VC}
		}
	}()
	var last ack
	for n := 0; n < 20; n++ {
		last = <-acks
	}
	cmd.Process.Signal(syscall.SIGKILL)
	<-exited
	for a := range acks { // acknowledged before the kill landed
		last = a
	}

	s := serve(t, pki, "--data-dir", dataDir)
	dev, err := mustClient(t, s.httpAddr).Device(ctx, "d1")
	if err != nil {
		t.Fatal(err)
	}
	if o := dev.VC.Compare(last.vc); o != protocol.Equal && o != protocol.After {
		t.Fatalf("clock after kill -9: %v, last acknowledged %v", dev.VC, last.vc)
	}
	sp, _ := dev.Props.Setpoint()
	if w := dev.Props[protocol.PropSetpoint].W; sp != last.sp && w.Compare(last.vc) != protocol.After {
		t.Fatalf("setpoint %v stamped %v after kill -9: the acknowledged %v at %v was lost", sp, w, last.sp, last.vc)
	}
}

func mustClient(t *testing.T, addr string) *api.Client {
	t.Helper()
	c, err := api.NewClient(addr, "")
	if err != nil {
		t.Fatal(err)
	}
	return c
}
