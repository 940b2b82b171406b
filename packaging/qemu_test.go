package packaging

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// MaxArmv6Size is the budget for the armv6 thermostat binary (Pi Zero).
const MaxArmv6Size = 15 << 20

// qemu describes one emulated target.
type qemu struct {
	name, arch, goarm string
	cmd               []string // the emulator and its flags
	goarchName        string   // what `thermostat version` prints after linux/
}

var targets = []qemu{
	// The Pi Zero/1's CPU: a GOARM=7 binary dies with SIGILL here.
	{"armv6", "arm", "6", []string{"qemu-arm", "-cpu", "arm1176"}, "arm"},
	{"arm64", "arm64", "", []string{"qemu-aarch64"}, "arm64"},
}

// TestArmBinariesUnderQemu cross-compiles the thermostat as `make cross`
// does, reports the sizes, and runs each binary under qemu-user: `version`,
// then a --hal sim run against a real Mosquitto that sends an event after
// a local `set`.
func TestArmBinariesUnderQemu(t *testing.T) {
	for _, q := range targets {
		if _, err := exec.LookPath(q.cmd[0]); err != nil {
			t.Skipf("%s not installed (apt-get install qemu-user)", q.cmd[0])
		}
	}
	root := repoRoot(t)
	dir := t.TempDir()
	const version = "9.8.7-qemu"
	for _, q := range targets {
		t.Run(q.name, func(t *testing.T) {
			bin := crossBuild(t, root, dir, "./firmware", q.arch, q.goarm, version)
			fi, err := os.Stat(bin)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("thermostat linux/%s: %d bytes (%.1f MiB)", q.name, fi.Size(), float64(fi.Size())/(1<<20))
			if q.name == "armv6" && fi.Size() > MaxArmv6Size {
				t.Errorf("armv6 thermostat is %d bytes, over the %d byte budget", fi.Size(), MaxArmv6Size)
			}
			if q.goarm != "" {
				info := run(t, "", nil, "go", "version", "-m", bin)
				if !strings.Contains(info, "GOARM="+q.goarm) || !strings.Contains(info, "CGO_ENABLED=0") || !strings.Contains(info, "-trimpath=true") {
					t.Errorf("build settings:\n%s", info)
				}
			}

			emu := func(args ...string) []string { return append(append(append([]string{}, q.cmd[1:]...), bin), args...) }
			out := run(t, "", nil, q.cmd[0], emu("version")...)
			for _, want := range []string{version, "abc1234", "2026-11-24T12:00:00Z", "linux/" + q.goarchName} {
				if !strings.Contains(out, want) {
					t.Errorf("version output %q lacks %q", out, want)
				}
			}
			simRun(t, q, emu)
		})
	}
	// The check is real: the emulated CPU is the Pi Zero's, on which an
	// armv7 build dies of an illegal instruction.
	t.Run("armv7 on arm1176", func(t *testing.T) {
		bin := crossBuild(t, root, dir, "./firmware", "arm", "7", version)
		out, err := tryRun("", nil, time.Minute, "qemu-arm", "-cpu", "arm1176", bin, "version")
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 128+int(syscall.SIGILL) && !strings.Contains(out, "Illegal instruction") {
			t.Fatalf("armv7 binary under -cpu arm1176: %v\n%s; want death by SIGILL", err, out)
		}
	})
}

// simRun runs `thermostat run --hal sim` under the emulator against a real
// Mosquitto, changes the setpoint with `thermostat set`, and waits for the
// device's event on the broker.
func simRun(t *testing.T, q qemu, emu func(...string) []string) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	id := "qemu-" + q.name
	ctl := pki.Connect(t, m.URL(), protocol.ControllerID)
	ctl.Subscribe(t, "thermo/"+id+"/#", 1)
	cert, key := pki.Client(t, id)
	dir, err := os.MkdirTemp("", "q") // short: a unix socket path is at most 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	socket := filepath.Join(dir, "ctl.sock")
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("control:\n  interval: 1s\n"), 0o644); err != nil {
		t.Fatal(err)
	}

	var log bytes.Buffer
	cmd := exec.Command(q.cmd[0], emu("run", "--config", cfg, "--hal", "sim", "--broker", m.URL(),
		"--ca", pki.CAFile, "--cert", cert, "--key", key, "--state-dir", filepath.Join(dir, "state"),
		"--control-socket", socket, "--sync-timeout", "1s", "--log-level", "debug")...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
		if t.Failed() {
			t.Logf("thermostat log:\n%s", log.String())
		}
	}()

	// Online status first (the will's counterpart), then a local change.
	ctl.WaitMatch(t, "the online status", func(m testenv.Message) bool {
		st, err := protocol.DecodeStatus(m.Payload)
		return m.Topic == "thermo/"+id+"/status" && err == nil && st.Online && st.Firmware != "" // the binary says its version
	})
	deadline := time.Now().Add(60 * time.Second)
	for {
		out, err := tryRun("", nil, 60*time.Second, q.cmd[0], emu("set", "--control-socket", socket, "--setpoint", "23.5")...)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("thermostat set: %v\n%s", err, out)
		}
		time.Sleep(200 * time.Millisecond) // the control socket comes up with the agent
	}
	ctl.WaitMatch(t, "the event of the local change", func(m testenv.Message) bool {
		return m.Topic == "thermo/"+id+"/event" && strings.Contains(string(m.Payload), "23.5")
	})

	// SIGTERM: a clean stop, status offline.
	ctl.Reset()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("no exit within 60 s of SIGTERM")
	}
	ctl.WaitPayload(t, "thermo/"+id+"/status", `{"v":1,"online":false}`)
}
