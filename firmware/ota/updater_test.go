package ota

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	ctlota "github.com/thermofleet/thermo/controllerlite/ota"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/release"
)

// world is a release server of the fleet and a device's updater.
type world struct {
	t        *testing.T
	pki      *testenv.PKI
	sk       ed25519.PrivateKey
	pk       ed25519.PublicKey
	releases string
	srv      *ctlota.ReleaseServer
	srvLog   *testenv.Buffer
}

func newWorld(t *testing.T) *world {
	w := &world{t: t, pki: testenv.NewPKI(t), releases: t.TempDir(), srvLog: &testenv.Buffer{}}
	var err error
	if w.pk, w.sk, err = ed25519.GenerateKey(rand.Reader); err != nil {
		t.Fatal(err)
	}
	pair, err := tls.LoadX509KeyPair(w.pki.ServerCert, w.pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	w.srv, err = ctlota.ListenReleases(ctlota.ServerOptions{Listen: "127.0.0.1:0", Dir: w.releases, CAFile: w.pki.CAFile,
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil },
		Logger:      slog.New(slog.NewTextHandler(w.srvLog, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.srv.Close() })
	return w
}

// publish writes a release binary of size bytes into the releases
// directory and returns its signed manifest, edited by edit first.
func (w *world) publish(name string, size int, edit func(*release.Manifest), sk ed25519.PrivateKey, signedAt time.Time) (release.Manifest, []byte) {
	w.t.Helper()
	data := make([]byte, size)
	rand.Read(data)
	bin := filepath.Join(w.releases, name)
	if err := os.WriteFile(bin, data, 0o644); err != nil {
		w.t.Fatal(err)
	}
	m, err := release.Describe(bin, "1.1.0", release.HostArch(), signedAt.Add(24*time.Hour))
	if err != nil {
		w.t.Fatal(err)
	}
	if edit != nil {
		edit(&m)
	}
	if sk == nil {
		sk = w.sk
	}
	mf, err := release.Sign(m, sk, signedAt)
	if err != nil {
		w.t.Fatal(err)
	}
	return m, mf
}

// device is an updater with its reports.
type device struct {
	*Updater
	dir      string
	mu       sync.Mutex
	reports  []protocol.OTAState
	restarts int
}

func (w *world) device(id, running string) *device {
	w.t.Helper()
	cert, key := w.pki.Client(w.t, id)
	d := &device{dir: w.t.TempDir()}
	up, err := NewUpdater(UpdaterOptions{
		Dir: d.dir, ID: id, Root: "thermo", Running: running, Arch: release.HostArch(), Key: w.pk,
		TLS: w.pki.ClientTLS(w.t, cert, key), BrokerHost: "localhost",
		Publish: func(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
			if topic != "thermo/"+id+"/ota_state" || qos != 1 || !retain {
				w.t.Errorf("report on %s qos %d retain %v", topic, qos, retain)
			}
			s, err := protocol.DecodeOTAState(payload)
			if err != nil {
				w.t.Error(err)
			}
			d.mu.Lock()
			d.reports = append(d.reports, s)
			d.mu.Unlock()
			return nil
		},
		Healthy: func() error { return nil },
		Restart: func() { d.mu.Lock(); d.restarts++; d.mu.Unlock() },
		Retry:   50 * time.Millisecond,
	})
	if err != nil {
		w.t.Fatal(err)
	}
	d.Updater = up
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); up.Run(ctx) }()
	w.t.Cleanup(func() { cancel(); <-done })
	return d
}

func (d *device) states() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var s []string
	for _, r := range d.reports {
		s = append(s, r.State+":"+r.Code)
	}
	return s
}

func (d *device) last() protocol.OTAState {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.reports) == 0 {
		return protocol.OTAState{}
	}
	return d.reports[len(d.reports)-1]
}

func (w *world) offer(d *device, manifest []byte, binary string) {
	w.t.Helper()
	port := w.srv.Addr().(*net.TCPAddr).Port
	b, err := protocol.EncodeOffer(protocol.Offer{Manifest: json.RawMessage(manifest), Port: port, Path: ctlota.ReleasesPath + binary})
	if err != nil {
		w.t.Fatal(err)
	}
	d.Handle(b)
}

// TestOffer: a good release is downloaded over mutual TLS, verified and
// installed into the inactive slot on trial; every bad one is refused
// with its reason and nothing is installed.
func TestOffer(t *testing.T) {
	w := newWorld(t)
	now := time.Now()
	_, otherSK, _ := ed25519.GenerateKey(rand.Reader)
	for _, tc := range []struct {
		name    string
		edit    func(*release.Manifest)
		sk      ed25519.PrivateKey
		at      time.Time
		tamper  bool
		remove  bool // the binary is not on the server
		running string
		want    string // final state:code
		msg     string
	}{
		{"good", nil, nil, now, false, false, "1.0.0", "installed:", ""},
		{"tampered binary", nil, nil, now, true, false, "1.0.0", "refused:bad_hash", "SHA-256"},
		{"wrong signature", nil, otherSK, now, false, false, "1.0.0", "refused:bad_signature", "this thermostat trusts key"},
		{"wrong architecture", func(m *release.Manifest) { m.Arch = "linux/mips" }, nil, now, false, false, "1.0.0", "refused:wrong_arch", "for linux/mips"},
		{"expired manifest", nil, nil, now.Add(-48 * time.Hour), false, false, "1.0.0", "refused:expired", "expired at"},
		{"downgrade", nil, nil, now, false, false, "1.2.0", "refused:downgrade", "older than the running 1.2.0"},
		{"too old to upgrade", func(m *release.Manifest) { m.MinVersion = "1.0.5" }, nil, now, false, false, "1.0.0", "refused:too_old", "upgrades 1.0.5 or later"},
		{"already running", nil, nil, now, false, false, "1.1.0", "healthy:", ""},
		{"not on the server", nil, nil, now, false, true, "1.0.0", "failed:download", "404 Not Found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			name := "thermostat-" + strings.ReplaceAll(tc.name, " ", "-")
			m, mf := w.publish(name, 64<<10, tc.edit, tc.sk, tc.at)
			if tc.tamper {
				bin := filepath.Join(w.releases, name)
				data, _ := os.ReadFile(bin)
				data[1000] ^= 0xff
				os.WriteFile(bin, data, 0o644)
			}
			if tc.remove {
				os.Remove(filepath.Join(w.releases, name))
			}
			d := w.device("d1", tc.running)
			w.offer(d, mf, name)
			testenv.Eventually(t, 10*time.Second, tc.want, func() (bool, string) {
				s := d.states()
				return len(s) > 0 && s[len(s)-1] == tc.want, strings.Join(s, " ")
			})
			if r := d.last(); !strings.Contains(r.Reason, tc.msg) || r.Running != tc.running {
				t.Errorf("report %+v, want a reason with %q", r, tc.msg)
			}
			st, err := Load(d.dir)
			if err != nil {
				t.Fatal(err)
			}
			installed := tc.want == "installed:"
			if installed != (st.Trial != nil) || d.restarts != map[bool]int{true: 1, false: 0}[installed] {
				t.Fatalf("slots %+v, %d restarts; installed %v", st, d.restarts, installed)
			}
			if installed {
				if got := strings.Join(d.states(), " "); got != "offered: downloading: installed:" {
					t.Errorf("reports %s", got)
				}
				if st.Trial.Slot != SlotA || st.Trial.Version != "1.1.0" || st.Trial.From != "1.0.0" {
					t.Errorf("trial %+v", st.Trial)
				}
				if err := release.CheckFile(m, BinaryPath(d.dir, SlotA)); err != nil {
					t.Error(err)
				}
				fi, _ := os.Stat(BinaryPath(d.dir, SlotA))
				if fi.Mode().Perm() != 0o700 {
					t.Errorf("slot binary mode %v", fi.Mode())
				}
			}
		})
	}
}

// TestResume: a download cut short (the board killed with SIGKILL, or
// power lost) leaves the board running the version it had, and the next
// offer resumes where the partial file ends, with an HTTP Range request.
func TestResume(t *testing.T) {
	w := newWorld(t)
	m, mf := w.publish("thermostat-resume", 256<<10, nil, nil, time.Now())
	data, _ := os.ReadFile(filepath.Join(w.releases, "thermostat-resume"))
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, downloadDir), 0o700)
	half := len(data) / 2
	os.WriteFile(filepath.Join(dir, downloadDir, m.SHA256+".part"), data[:half], 0o600)
	// Bootable: nothing in the slots, the packaged binary runs.
	var execd string
	l := &Launcher{Dir: dir, Version: "1.0.0", exec: func(p string, _, _ []string) error { execd = p; return nil }}
	if out := l.Launch(t.Context()); !out.RunSelf || execd != "" {
		t.Fatalf("after a broken download: %+v %q", out, execd)
	}

	cert, key := w.pki.Client(t, "d2")
	rep := make(chan protocol.OTAState, 16)
	up, err := NewUpdater(UpdaterOptions{
		Dir: dir, ID: "d2", Root: "thermo", Running: "1.0.0", Arch: release.HostArch(), Key: w.pk,
		TLS: w.pki.ClientTLS(t, cert, key), BrokerHost: "localhost",
		Publish: func(_ context.Context, _ string, payload []byte, _ byte, _ bool) error {
			s, _ := protocol.DecodeOTAState(payload)
			rep <- s
			return nil
		},
		Healthy: func() error { return nil }, Restart: func() {},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &device{Updater: up, dir: dir}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go up.Run(ctx)
	w.offer(d, mf, "thermostat-resume")
	for s := range rep {
		if s.State == protocol.OTADownloading && s.Progress != int64(half) {
			t.Errorf("download resumed at %d, want %d", s.Progress, half)
		}
		if s.State == protocol.OTAInstalled {
			break
		}
		if s.State == protocol.OTARefused || s.State == protocol.OTAFailed {
			t.Fatalf("%+v", s)
		}
	}
	if !strings.Contains(w.srvLog.String(), `range="bytes=`+strconv.Itoa(half)+`-"`) {
		t.Errorf("no range request in the server's log:\n%s", w.srvLog.String())
	}
	if err := release.CheckFile(m, BinaryPath(dir, SlotA)); err != nil {
		t.Fatal(err)
	}
}
