package e2e

import (
	"context"
	"fmt"
	"io"
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

	"github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/firmware/agent"
	fwota "github.com/thermofleet/thermo/firmware/ota"
	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

var (
	otaBuildMu sync.Mutex
	otaBuilt   = map[string]string{}
	otaBinDir  string
)

// otaBuild builds pkg with -X main.version=version (and main.mode=mode
// for the bad release), as the release build stamps versions, once per
// test binary.
func otaBuild(t *testing.T, pkg, version, mode string) string {
	t.Helper()
	otaBuildMu.Lock()
	defer otaBuildMu.Unlock()
	key := filepath.Base(pkg) + "-" + version + "-" + mode
	if p, ok := otaBuilt[key]; ok {
		return p
	}
	if otaBinDir == "" {
		var err error
		if otaBinDir, err = os.MkdirTemp("", "thermo-ota-bin-"); err != nil {
			t.Fatal(err)
		}
	}
	out := filepath.Join(otaBinDir, key)
	ldflags := "-X main.version=" + version + " -X main.commit=abc1234 -X main.date=2026-12-04T12:00:00Z"
	if mode != "" {
		ldflags += " -X main.mode=" + mode
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, b)
	}
	otaBuilt[key] = out
	return out
}

// otaWorld is a controller serving releases and one thermostat of version
// 1.0.0 under a supervisor that acts as systemd.
type otaWorld struct {
	*world
	ctl      *binController
	releases string
	keys     string
	dev      *binThermostat
	svc      *testenv.Service
	clock    protocol.Clock // the device's clock when last synced
}

func newOTAWorld(t *testing.T, deadline time.Duration) *otaWorld {
	return newOTAWorldWith(t, deadline, "--ota-listen", "127.0.0.1:0")
}

// newOTAWorldWith gives the controller ctlFlags (--ota-listen among them).
func newOTAWorldWith(t *testing.T, deadline time.Duration, ctlFlags ...string) *otaWorld {
	w := &otaWorld{world: newBareWorld(t, embedded), releases: t.TempDir(), keys: filepath.Join(t.TempDir(), "keys")}
	_, controllerBin := binaries(t)
	command(t, controllerBin, "release", "keygen", "--dir", w.keys)
	w.ctl = startBinController(t, w.world, t.TempDir(), append([]string{"--releases-dir", w.releases}, ctlFlags...)...)
	old := otaBuild(t, "../firmware", "1.0.0", "")
	w.dev = newBinThermostat(t, w.world, "d1", "--release-key", filepath.Join(w.keys, "release.pub"),
		"--ota-trial-deadline", deadline.String())
	w.dev.bin = old
	w.dev.args[0] = old
	w.svc = testenv.StartService(t, &testenv.Service{Argv: w.dev.args, Watchdog: 3 * time.Second, StartTimeout: 20 * time.Second, RestartSec: 200 * time.Millisecond})
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("thermostat under the supervisor:\n%s\nevents: %v", w.svc.Output.String(), w.svc.Events())
		}
	})
	w.synced("1.0.0")
	if c, _ := w.world.ctl("d1"); c.Firmware != "1.0.0" {
		t.Errorf("the fleet shows firmware %q, want 1.0.0", c.Firmware)
	}
	return w
}

// synced waits until the thermostat and the controller agree again, and
// checks that the device's clock went on from where it was: an update in
// either direction never restarts or rewrites the clock's history.
func (w *otaWorld) synced(version string) {
	w.t.Helper()
	var st agent.Status
	eventually(w.t, "d1 synced", func() (bool, string) {
		var err error
		st, err = w.dev.status()
		if err != nil {
			return false, err.Error()
		}
		c, err := w.world.ctl(w.dev.id)
		if err != nil {
			return false, err.Error()
		}
		return st.Connected && !st.Rejoining && c.Online && sameProps(st.Props, c.Props), fmt.Sprintf("%+v %+v", st, c)
	})
	if st.Firmware != version {
		w.t.Errorf("thermostat status says firmware %q, want %s", st.Firmware, version)
	}
	if w.clock != (protocol.Clock{}) && (st.VC[0] < w.clock[0] || st.VC[1] <= w.clock[1]) {
		w.t.Errorf("the device's clock is %v after the restart into %s, was %v: it must go on, not start again", st.VC, version, w.clock)
	}
	w.clock = st.VC
	out := command(w.t, w.dev.bin, "version", "--state-dir", filepath.Join(w.dev.dir, "state"))
	w.t.Logf("thermostat version: %s", out)
}

// release puts bin into the releases directory as a signed release.
func (w *otaWorld) release(bin, name, version string) string {
	w.t.Helper()
	dst := filepath.Join(w.releases, name)
	in, err := os.Open(bin)
	if err != nil {
		w.t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		w.t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		w.t.Fatal(err)
	}
	out.Close()
	command(w.t, w.ctl.bin, "release", "sign", "--key", filepath.Join(w.keys, "release.key"), "--version", version, dst)
	return dst + ".manifest.json"
}

func (w *otaWorld) rollout(manifest string, percent int) {
	w.t.Helper()
	command(w.t, w.ctl.bin, "ota", "rollout", manifest, "--percent", fmt.Sprint(percent), "--http", w.ctl.apiAddr)
}

// state waits until the controller's view of d1 has state.
func (w *otaWorld) state(within time.Duration, state string) ota.DeviceStatus {
	w.t.Helper()
	var d ota.DeviceStatus
	testenv.Eventually(w.t, within, "d1 "+state, func() (bool, string) {
		st, err := w.api.OTAStatus(context.Background())
		if err != nil {
			return false, err.Error()
		}
		for _, x := range st.Devices {
			if x.ID == "d1" {
				d = x
			}
		}
		return d.State == state, fmt.Sprintf("%+v", st)
	})
	return d
}

// TestOTAUpdate: a release of the real thermostat, signed and rolled out
// from the controller, is offered, downloaded over mutual TLS, verified,
// installed in slot a, switched to under the supervisor and proven
// healthy; the device syncs on the new version and `thermostat version`
// names the slot. Offered again, it stays.
func TestOTAUpdate(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newOTAWorld(t, 30*time.Second)
	manifest := w.release(otaBuild(t, "../firmware", "1.1.0", ""), "thermostat-1.1.0-linux", "1.1.0")
	w.rollout(manifest, 100)
	d := w.state(60*time.Second, protocol.OTAHealthy)
	if d.Running != "1.1.0" || d.Slot != "a" {
		t.Fatalf("after the update: %+v, want 1.1.0 running from slot a", d)
	}
	w.synced("1.1.0")
	eventually(t, "the fleet shows firmware 1.1.0", func() (bool, string) {
		c, err := w.world.ctl("d1")
		return err == nil && c.Firmware == "1.1.0", fmt.Sprintf("%+v %v", c, err)
	})
	out := command(t, w.dev.bin, "version", "--state-dir", filepath.Join(w.dev.dir, "state"))
	if !strings.Contains(out, "runs: slot a (1.1.0), active") {
		t.Errorf("thermostat version says:\n%s", out)
	}
	st, _ := w.api.OTAStatus(context.Background())
	if st.Rollout == nil || st.Rollout.Paused {
		t.Errorf("rollout %+v", st.Rollout)
	}
}

// TestOTARollback: a release that crashes at start, one that hangs (the
// watchdog kills it) and one that never connects are each rolled back by
// the board itself; the old version runs and syncs again, reports the
// rollback, and the rollout pauses.
func TestOTARollback(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	for _, tc := range []struct {
		mode   string
		reason string
	}{
		{"crash", "exit status 3"},
		{"hang", "watchdog"},
		{"noconnect", "not healthy within 8s"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			w := newOTAWorld(t, 8*time.Second)
			manifest := w.release(otaBuild(t, "./testdata/badfw", "1.1.0", tc.mode), "thermostat-1.1.0-"+tc.mode, "1.1.0")
			w.rollout(manifest, 100)
			d := w.state(90*time.Second, protocol.OTARolledBack)
			if d.Running != "1.0.0" || d.Slot != "packaged" || !strings.Contains(d.Reason, tc.reason) {
				t.Errorf("after the rollback: %+v, want 1.0.0 packaged and a reason with %q", d, tc.reason)
			}
			w.synced("1.0.0")
			out := command(t, w.ctl.bin, "ota", "status", "--http", w.ctl.apiAddr)
			if !strings.Contains(out, "PAUSED (device d1 rolled back 1.1.0") || !regexp.MustCompile(`(?m)^d1\s+rolled back\s+1\.0\.0\s+packaged\s`).MatchString(out) {
				t.Errorf("ota status:\n%s", out)
			}
			st, _ := w.api.OTAStatus(context.Background())
			if st.Rollout == nil || !st.Rollout.Paused || !strings.Contains(st.Rollout.PauseReason, "device d1 rolled back 1.1.0") {
				t.Errorf("rollout %+v, want it paused by d1's rollback", st.Rollout)
			}
		})
	}
}

// TestOTAKill9DuringSwitch: the thermostat killed with SIGKILL while it
// switches to the new release (installed, restarting into it): the board
// boots, takes the release on its next start and proves it healthy.
func TestOTAKill9DuringSwitch(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	w := newOTAWorld(t, 30*time.Second)
	manifest := w.release(otaBuild(t, "../firmware", "1.1.0", ""), "thermostat-1.1.0-linux", "1.1.0")
	before := w.svc.Count("start")
	w.rollout(strings.TrimSuffix(manifest, ".manifest.json"), 100) // the binary's path names its manifest too
	testenv.Eventually(t, 30*time.Second, "the switch begun", func() (bool, string) {
		return w.svc.Count("start") > before, fmt.Sprint(w.svc.Events())
	})
	pid := w.svc.Pid()
	if pid != 0 {
		syscall.Kill(pid, syscall.SIGKILL)
	}
	d := w.state(60*time.Second, protocol.OTAHealthy)
	if d.Running != "1.1.0" || d.Slot != "a" {
		t.Fatalf("after the update: %+v", d)
	}
	w.synced("1.1.0")
	t.Logf("supervisor: %v", w.svc.Events())
}

// TestOTAKill9DuringDownload: the thermostat killed with SIGKILL while its
// download is stuck in the network: the board boots on the version it had
// and syncs, and once the network is back the offer still retained on its
// topic is taken up and the release proven healthy.
func TestOTAKill9DuringDownload(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binaries")
	}
	otaPort := testenv.FreePort(t)
	proxy, err := holdproxy.Listen("127.0.0.1:0", fmt.Sprintf("127.0.0.1:%d", otaPort))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	proxy.Hold()
	w := newOTAWorldWith(t, 30*time.Second, "--ota-listen", fmt.Sprintf("127.0.0.1:%d", otaPort),
		"--ota-url", fmt.Sprintf("https://localhost:%d", proxy.Addr().(*net.TCPAddr).Port))
	manifest := w.release(otaBuild(t, "../firmware", "1.1.0", ""), "thermostat-1.1.0-linux", "1.1.0")
	w.rollout(manifest, 100)
	w.state(30*time.Second, protocol.OTAOffered)
	before := w.svc.Count("start")
	syscall.Kill(w.svc.Pid(), syscall.SIGKILL)
	testenv.Eventually(t, 30*time.Second, "the thermostat started again", func() (bool, string) {
		return w.svc.Count("start") > before, fmt.Sprint(w.svc.Events())
	})
	w.synced("1.0.0")
	if st, err := fwota.Load(filepath.Join(w.dev.dir, "state")); err != nil || st.Trial != nil || st.Active != "" {
		t.Fatalf("slots after the broken download: %+v, %v", st, err)
	}
	proxy.Release()
	d := w.state(60*time.Second, protocol.OTAHealthy)
	if d.Running != "1.1.0" {
		t.Fatalf("after the download resumed: %+v", d)
	}
	w.synced("1.1.0")
}
