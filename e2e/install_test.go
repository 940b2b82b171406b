package e2e

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// installerMistake is one wrong set of files given to a binary: the flags
// that differ from a correct command line and what the error must say.
type installerMistake struct {
	name string
	args []string
	want []string
}

// refuse runs a binary that must exit with status 1 at once; before the
// checks existed these commands started and kept running (retrying TLS
// handshakes that could never succeed), so the timeout is a failure too.
func refuse(t *testing.T, args []string, want []string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%s still running after %v: it did not refuse its certificates\nstdout:\n%s\nstderr:\n%s",
			filepath.Base(args[0]), waitTimeout, stdout.String(), stderr.String())
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("%s: %v, want exit status 1\nstderr:\n%s", filepath.Base(args[0]), err, stderr.String())
	}
	for _, w := range want {
		if !strings.Contains(stderr.String(), w) {
			t.Errorf("stderr lacks %q:\n%s", w, stderr.String())
		}
	}
	if stdout.Len() != 0 {
		t.Errorf("printed on stdout:\n%s", stdout.String())
	}
	return stderr.String()
}

// foreignServer writes a server certificate for testenv.ServerHosts
// issued by the PKI's foreign CA: another fleet's.
func foreignServer(t *testing.T, pki *testenv.PKI) (certFile, keyFile string) {
	t.Helper()
	certPEM, keyPEM, err := pki.Foreign.IssueServer(testenv.ServerHosts, nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := provisioning.WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

// TestServeRefusesInstallerMistakes: `controllerlite serve` given the
// wrong certificate files exits with status 1 and an error naming the
// file and the fix, before it creates or writes anything in --data-dir.
func TestServeRefusesInstallerMistakes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs controllerlite")
	}
	_, controllerBin := binaries(t)
	pki := testenv.NewPKI(t)
	d1Cert, d1Key := pki.Client(t, "d1")
	ctlCert, _ := pki.Client(t, protocol.ControllerID)
	foreignCert, foreignKey := foreignServer(t, pki)

	for _, tc := range []installerMistake{
		{"device certificate as the server certificate",
			[]string{"--cert", d1Cert, "--key", d1Key, "--listen", "127.0.0.1:0"},
			[]string{d1Cert, "is not a server certificate", "pki server"}},
		{"--ca that is not a CA",
			[]string{"--ca", pki.ServerCert, "--cert", pki.ServerCert, "--key", pki.ServerKey, "--listen", "127.0.0.1:0"},
			[]string{"CA certificate " + pki.ServerCert, "is not a CA certificate", "pki init"}},
		{"key of another certificate",
			[]string{"--cert", pki.ServerCert, "--key", d1Key, "--listen", "127.0.0.1:0"},
			[]string{d1Key, "does not belong to certificate " + pki.ServerCert}},
		{"server certificate of another fleet",
			[]string{"--cert", foreignCert, "--key", foreignKey, "--listen", "127.0.0.1:0"},
			[]string{foreignCert, `issued by "testenv foreign CA"`, pki.CAFile}},
		{"server certificate not valid for the listen address",
			[]string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--listen", "127.0.0.2:0"},
			[]string{pki.ServerCert, "not for 127.0.0.2", "--host 127.0.0.2"}},
		{"device certificate as the controller's with --broker",
			[]string{"--cert", d1Cert, "--key", d1Key, "--broker", "mqtts://localhost:1"},
			[]string{d1Cert, `CN "d1"`, "pki controller"}},
		{"server certificate as the controller's with --broker",
			[]string{"--cert", pki.ServerCert, "--key", pki.ServerKey, "--broker", "mqtts://localhost:1"},
			[]string{pki.ServerCert, "not a client certificate", "pki controller"}},
		{"controller key of another certificate with --broker",
			[]string{"--cert", ctlCert, "--key", d1Key, "--broker", "mqtts://localhost:1"},
			[]string{d1Key, "does not belong to certificate " + ctlCert}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := filepath.Join(t.TempDir(), "data")
			args := []string{controllerBin, "serve", "--ca", pki.CAFile, "--data-dir", dataDir, "--http", "127.0.0.1:0"}
			refuse(t, append(args, tc.args...), append([]string{"controllerlite: serve: certificates: "}, tc.want...))
			if _, err := os.Stat(dataDir); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("--data-dir %s was created (%v)", dataDir, err)
			}
		})
	}
}

// TestThermostatRefusesInstallerMistakes: `thermostat run` given a wrong
// CA (or certificate, or key) exits with status 1 and an error naming the
// file and the fix, before it creates its state directory or its control
// socket.
func TestThermostatRefusesInstallerMistakes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs thermostat")
	}
	thermostatBin, _ := binaries(t)
	pki := testenv.NewPKI(t)
	d1Cert, d1Key := pki.Client(t, "d1")
	foreignCert, foreignKey := pki.ForeignClient(t, "d1")
	missing := filepath.Join(t.TempDir(), "etc", "ca.crt")

	for _, tc := range []installerMistake{
		{"another fleet's CA",
			[]string{"--ca", pki.ForeignCAFile, "--cert", d1Cert, "--key", d1Key},
			[]string{d1Cert, `issued by "testenv CA"`, pki.ForeignCAFile}},
		{"CA file missing",
			[]string{"--ca", missing, "--cert", d1Cert, "--key", d1Key},
			[]string{missing, "no such file"}},
		{"device certificate as --ca",
			[]string{"--ca", d1Cert, "--cert", d1Cert, "--key", d1Key},
			[]string{"CA certificate " + d1Cert, "is not a CA certificate"}},
		{"certificate of another fleet",
			[]string{"--ca", pki.CAFile, "--cert", foreignCert, "--key", foreignKey},
			[]string{foreignCert, `issued by "testenv foreign CA"`}},
		{"key of another certificate",
			[]string{"--ca", pki.CAFile, "--cert", d1Cert, "--key", foreignKey},
			[]string{foreignKey, "does not belong to certificate " + d1Cert}},
		{"server certificate as the device's",
			[]string{"--ca", pki.CAFile, "--cert", pki.ServerCert, "--key", pki.ServerKey},
			[]string{pki.ServerCert, "not a client certificate", "pki device"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			stateDir, socket := filepath.Join(dir, "state"), filepath.Join(dir, "run", "ctl.sock")
			args := []string{thermostatBin, "run", "--hal", "sim", "--broker", "mqtts://localhost:1",
				"--state-dir", stateDir, "--control-socket", socket}
			refuse(t, append(args, tc.args...), append([]string{"thermostat: certificates: "}, tc.want...))
			for _, p := range []string{stateDir, filepath.Dir(socket)} {
				if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("%s was created (%v)", p, err)
				}
			}
		})
	}
}

// spoilLeaf writes garbage over the first leaf page of the bbolt database
// at path: the damage a failing SD card does.
func spoilLeaf(t *testing.T, path string) {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, pageSize := -1, db.Info().PageSize
	err = db.View(func(tx *bbolt.Tx) error {
		for id := 2; leaf < 0 && int64(id*pageSize) < tx.Size(); id++ {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info != nil && info.Type == "leaf" {
				leaf = id
			}
		}
		return nil
	})
	db.Close()
	if err != nil || leaf < 0 {
		t.Fatalf("no leaf page in %s (%v)", path, err)
	}
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	garbage := make([]byte, pageSize)
	rand.New(rand.NewSource(1)).Read(garbage)
	if _, err := f.WriteAt(garbage, int64(leaf*pageSize)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestServeRefusesCorruptStores: garbage in controller.db, in the
// embedded broker's broker.db or in history.db stops `controllerlite serve` with an error
// that names the file and the cure (move it aside: what is lost is
// rebuilt), not with a Go panic.
func TestServeRefusesCorruptStores(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs controllerlite")
	}
	_, controllerBin := binaries(t)
	pki := testenv.NewPKI(t)

	for _, tc := range []struct {
		name string
		file func(dataDir string) string // writes a database and returns its path
		cure string
	}{
		{"controller.db", func(dataDir string) string {
			s, err := store.Open(dataDir)
			if err != nil {
				t.Fatal(err)
			}
			for i := range 200 {
				r := protocol.NewReplica(protocol.ControllerSide)
				if err := s.Put(store.Device{ID: fmt.Sprintf("d%d", i), Replica: r}); err != nil {
					t.Fatal(err)
				}
			}
			s.Close()
			return filepath.Join(dataDir, store.FileName)
		}, store.CureController},
		{"broker.db", func(dataDir string) string {
			path := filepath.Join(dataDir, server.BrokerDir, "broker.db")
			if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
				t.Fatal(err)
			}
			db, err := bbolt.Open(path, 0o600, nil)
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bbolt.Tx) error {
				b, err := tx.CreateBucketIfNotExists([]byte("mochi"))
				for i := 0; err == nil && i < 200; i++ {
					err = b.Put(fmt.Appendf(nil, "RET_thermo/d%d/event", i), []byte(`{"v":1,"vc":[1,2],"props":{},"src":"local"}`))
				}
				return err
			})
			db.Close()
			if err != nil {
				t.Fatal(err)
			}
			return path
		}, store.CureBroker},
		{"history.db", func(dataDir string) string {
			h, err := history.Open(dataDir, history.Options{})
			if err != nil {
				t.Fatal(err)
			}
			temp := 20.5
			for i := range 2000 {
				at := time.Now().Add(time.Duration(i-2000) * 30 * time.Second)
				h.Telemetry(fmt.Sprintf("d%d", i%10), at, protocol.Telemetry{V: 1, TS: at, TempC: &temp, SensorOK: true}, nil)
			}
			if err := h.Close(); err != nil {
				t.Fatal(err)
			}
			return h.Path()
		}, store.CureHistory},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dataDir := t.TempDir()
			path := tc.file(dataDir)
			spoilLeaf(t, path)
			stderr := refuse(t, []string{controllerBin, "serve", "--ca", pki.CAFile, "--cert", pki.ServerCert, "--key", pki.ServerKey,
				"--data-dir", dataDir, "--http", "127.0.0.1:0", "--listen", "127.0.0.1:0"},
				[]string{"controllerlite: serve: ", path, "database file is corrupt", "mv " + path + " " + path + ".corrupt", tc.cure})
			if strings.Contains(stderr, "goroutine ") {
				t.Errorf("a stack trace on stderr:\n%s", stderr)
			}
		})
	}
}
