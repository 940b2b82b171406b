package ota

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/release"
)

var (
	buildOnce sync.Map // "version mode" -> *builtFake
)

type builtFake struct {
	once sync.Once
	path string
	err  error
}

// fake builds testdata/fakefw as version in mode, once per test binary.
func fake(t *testing.T, version, mode string) string {
	t.Helper()
	key := version + "-" + mode
	v, _ := buildOnce.LoadOrStore(key, &builtFake{})
	b := v.(*builtFake)
	b.once.Do(func() {
		dir, err := os.MkdirTemp("", "fakefw")
		if err != nil {
			b.err = err
			return
		}
		b.path = filepath.Join(dir, "thermostat-"+key)
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+version+" -X main.mode="+mode, "-o", b.path, "./testdata/fakefw")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			b.err = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if b.err != nil {
		t.Fatal(b.err)
	}
	return b.path
}

// stage installs a copy of bin as version into dir's inactive slot, on
// trial, as the updater does after its checks.
func stage(t *testing.T, dir, bin, version string, deadline time.Duration) string {
	t.Helper()
	src := filepath.Join(dir, "download")
	copyFile(t, bin, src)
	m, err := release.Describe(src, version, release.HostArch(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	slot, err := Install(dir, m, src, InstallOptions{Running: "1.0.0", Deadline: deadline, Attempts: 3})
	if err != nil {
		t.Fatal(err)
	}
	return slot
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	in, err := os.Open(from)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(to, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o700)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(out, in); err != nil {
		t.Fatal(err)
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
}

// ran returns the "VERSION SLOT PID" lines of every start so far.
func ran(dir string) []string {
	b, _ := os.ReadFile(filepath.Join(dir, "ran"))
	return strings.Fields(strings.ReplaceAll(string(b), " ", "_"))
}

func lastRan(dir string) string {
	r := ran(dir)
	if len(r) == 0 {
		return ""
	}
	v, s, _ := strings.Cut(r[len(r)-1], "_")
	s, _, _ = strings.Cut(s, "_")
	return v + " " + s
}

// service runs the packaged binary under the test supervisor.
func service(t *testing.T, packaged, dir string) *testenv.Service {
	return testenv.StartService(t, &testenv.Service{
		Argv: []string{packaged, "run", "--state-dir", dir}, Watchdog: 2 * time.Second,
		StartTimeout: 10 * time.Second, RestartSec: 50 * time.Millisecond,
	})
}

// TestTrial: a release on trial that proves healthy becomes the active
// slot and is exec'd directly from then on; one that crashes, hangs (the
// watchdog kills it) or never proves health is rolled back by itself and
// the version before runs again.
func TestTrial(t *testing.T) {
	testenv.SkipIfCannotReexec(t)
	packaged := fake(t, "1.0.0", "healthy")
	for _, tc := range []struct {
		mode       string
		deadline   time.Duration
		rolledBack bool
		reason     string
		// restarts of the service the rollback takes at least
		starts int
	}{
		{"healthy", 30 * time.Second, false, "", 1},
		{"crash", 30 * time.Second, true, "exit status 3", 3},
		{"hang", 30 * time.Second, true, "hung: the service watchdog killed it", 3},
		{"noconnect", 2 * time.Second, true, "not healthy within 2s", 1},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			slot := stage(t, dir, fake(t, "1.1.0", tc.mode), "1.1.0", tc.deadline)
			svc := service(t, packaged, dir)
			if !tc.rolledBack {
				testenv.Eventually(t, 20*time.Second, "the trial committed", func() (bool, string) {
					st, _ := Load(dir)
					return st.Trial == nil && st.Active == slot, fmt.Sprintf("%+v", st)
				})
				if got := lastRan(dir); got != "1.1.0 "+slot {
					t.Fatalf("ran %q, want 1.1.0 in slot %s", got, slot)
				}
				// The next start execs the slot: the service's main
				// process is the new version itself.
				svc.Stop()
				svc = service(t, packaged, dir)
				testenv.Eventually(t, 20*time.Second, "the committed slot exec'd", func() (bool, string) {
					r := ran(dir)
					return len(r) == 2 && r[1] == fmt.Sprintf("1.1.0_%s_%d", slot, svc.Pid()), fmt.Sprint(r, " pid ", svc.Pid())
				})
				return
			}
			testenv.Eventually(t, 60*time.Second, "the rollback", func() (bool, string) {
				st, _ := Load(dir)
				return st.Trial == nil && st.LastRollback != nil && lastRan(dir) == "1.0.0 packaged",
					fmt.Sprintf("%+v ran %v events %v", st, ran(dir), svc.Events())
			})
			st, _ := Load(dir)
			if st.Active != "" || st.LastRollback.Version != "1.1.0" || !strings.Contains(st.LastRollback.Reason, tc.reason) {
				t.Fatalf("after the rollback %+v, rollback %+v; want the packaged binary active and a reason with %q", st, st.LastRollback, tc.reason)
			}
			if n := svc.Count("start"); n < tc.starts {
				t.Errorf("%d starts, want at least %d", n, tc.starts)
			}
			if tc.mode == "hang" && svc.Count("watchdog-kill") == 0 {
				t.Errorf("the hang was not ended by the watchdog: %v", svc.Events())
			}
			// The old version stays: another start runs it again, not the
			// failed release.
			svc.Stop()
			before := len(ran(dir))
			service(t, packaged, dir)
			testenv.Eventually(t, 20*time.Second, "the old version again", func() (bool, string) {
				r := ran(dir)
				return len(r) == before+1 && lastRan(dir) == "1.0.0 packaged", fmt.Sprint(r)
			})
		})
	}
}

// TestKill9DuringSwitch: the launcher killed with SIGKILL while the new
// version is on trial (the service manager then kills the rest): the next
// start counts the attempt and the board runs a version either way.
func TestKill9DuringSwitch(t *testing.T) {
	testenv.SkipIfCannotReexec(t)
	dir := t.TempDir()
	stage(t, dir, fake(t, "1.1.0", "noconnect"), "1.1.0", 3*time.Second)
	svc := service(t, fake(t, "1.0.0", "healthy"), dir)
	testenv.Eventually(t, 20*time.Second, "the trial running", func() (bool, string) {
		return lastRan(dir) == "1.1.0 a", fmt.Sprint(ran(dir))
	})
	first := svc.Pid()
	if err := syscall.Kill(first, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	testenv.Eventually(t, 30*time.Second, "the rollback after the second attempt", func() (bool, string) {
		st, _ := Load(dir)
		return st.Trial == nil && st.LastRollback != nil && lastRan(dir) == "1.0.0 packaged", fmt.Sprintf("%+v %v", st, ran(dir))
	})
	st, _ := Load(dir)
	if !strings.Contains(st.LastRollback.Reason, "not healthy within 3s") {
		t.Errorf("reason %q", st.LastRollback.Reason)
	}
	if svc.Count("start") != 2 {
		t.Errorf("events %v: want two starts (the kill, then the attempt that missed its deadline)", svc.Events())
	}
}

// TestPackageUpgradeSupersedes: a .deb that installs a newer packaged
// binary than the OTA slots hold runs itself and resets the slots; an
// older one leaves the newer slot running.
func TestPackageUpgradeSupersedes(t *testing.T) {
	testenv.SkipIfCannotReexec(t)
	for _, tc := range []struct {
		packaged, want string
		reset          bool
	}{
		{"1.2.0", "1.2.0 packaged", true},
		{"1.0.5", "1.1.0 a", false},
	} {
		t.Run(tc.packaged, func(t *testing.T) {
			dir := t.TempDir()
			stage(t, dir, fake(t, "1.1.0", "healthy"), "1.1.0", 10*time.Second)
			if _, err := CommitTrial(dir, SlotA, time.Now()); err != nil {
				t.Fatal(err)
			}
			service(t, fake(t, tc.packaged, "healthy"), dir)
			testenv.Eventually(t, 20*time.Second, tc.want, func() (bool, string) {
				return lastRan(dir) == tc.want, fmt.Sprint(ran(dir))
			})
			if st, _ := Load(dir); (st.Active == "") != tc.reset {
				t.Errorf("slots %+v, reset %v", st, tc.reset)
			}
		})
	}
}

// TestBrokenSlotsRecord: whatever is wrong with slots.json or a slot, the
// packaged binary runs.
func TestBrokenSlotsRecord(t *testing.T) {
	for _, tc := range []struct {
		name, record string
		removeBin    bool
	}{
		{"not json", "{", false},
		{"unknown slot", `{"active":"c"}`, false},
		{"missing binary", `{"active":"a","slots":{"a":{"version":"9.0.0"}}}`, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			os.WriteFile(filepath.Join(dir, slotsFile), []byte(tc.record), 0o600)
			var execd string
			l := &Launcher{Dir: dir, Version: "1.0.0", exec: func(p string, _, _ []string) error { execd = p; return nil }}
			if out := l.Launch(t.Context()); !out.RunSelf || execd != "" {
				t.Fatalf("outcome %+v, exec %q: want the packaged binary", out, execd)
			}
		})
	}
}
