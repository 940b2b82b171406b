package provisioning_test

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/provisioning"
)

// runPKI runs the CLI and returns its output.
func runPKI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var o, e bytes.Buffer
	err = provisioning.RunPKI(args, &o, &e)
	return o.String(), e.String(), err
}

func mustPKI(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runPKI(t, args...)
	if err != nil {
		t.Fatalf("pki %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return parseCert(t, b)
}

func TestPKICommands(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	mustPKI(t, "init", "--dir", dir)
	out := mustPKI(t, "server", "--dir", dir, "--host", "broker.lan", "--host", "192.168.1.10,localhost")
	if !strings.Contains(out, filepath.Join(dir, "server.crt")) {
		t.Errorf("server output does not say where the certificate went:\n%s", out)
	}
	srv := readCert(t, filepath.Join(dir, "server.crt"))
	if srv.Subject.CommonName != "broker.lan" || strings.Join(srv.DNSNames, ",") != "broker.lan,localhost" ||
		len(srv.IPAddresses) != 1 || srv.IPAddresses[0].String() != "192.168.1.10" {
		t.Errorf("server certificate CN %q DNS %v IP %v", srv.Subject.CommonName, srv.DNSNames, srv.IPAddresses)
	}

	// Flags after the positional argument.
	out = mustPKI(t, "device", "d1", "--dir", dir)
	bundle := filepath.Join(dir, "devices", "d1")
	for _, want := range []string{bundle, "thermostat run", "--cert", "--key", "--ca"} {
		if !strings.Contains(out, want) {
			t.Errorf("device output lacks %q:\n%s", want, out)
		}
	}
	if cn := readCert(t, filepath.Join(bundle, "device.crt")).Subject.CommonName; cn != "d1" {
		t.Errorf("device CN %q", cn)
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(bundle, "device.crt"), filepath.Join(bundle, "device.key")); err != nil {
		t.Errorf("bundle key pair: %v", err)
	}
	caInBundle, _ := os.ReadFile(filepath.Join(bundle, "ca.crt"))
	caInDir, _ := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if !bytes.Equal(caInBundle, caInDir) {
		t.Error("bundle ca.crt differs from the CA")
	}
	mustPKI(t, "device", "--dir", dir, "d2") // flags first work too
	mustPKI(t, "controller", "--dir", dir)
	if cn := readCert(t, filepath.Join(dir, "controller.crt")).Subject.CommonName; cn != "controller" {
		t.Errorf("controller CN %q", cn)
	}
	// One of several controller processes: CN controller-b, its own files.
	out = mustPKI(t, "controller", "--dir", dir, "--name", "b")
	if cn := readCert(t, filepath.Join(dir, "controller-b.crt")).Subject.CommonName; cn != "controller-b" {
		t.Errorf("controller --name b: CN %q", cn)
	}
	if !strings.Contains(out, "--controller controller-b") {
		t.Errorf("controller --name output does not say how Mosquitto learns it:\n%s", out)
	}
	out = mustPKI(t, "mosquitto", "--dir", dir, "--port", "18883", "--topic-root", "site", "--controller", "controller-b")
	conf, err := os.ReadFile(filepath.Join(dir, "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	abs, _ := filepath.Abs(dir)
	assertLinesInOrder(t, "mosquitto.conf", string(conf), []string{
		"acl_file " + filepath.Join(abs, "mosquitto.acl"), "listener 18883", "cafile " + filepath.Join(abs, "ca.crt"),
		"certfile " + filepath.Join(abs, "server.crt"), "keyfile " + filepath.Join(abs, "server.key"), "require_certificate true",
	})
	acl, _ := os.ReadFile(filepath.Join(dir, "mosquitto.acl"))
	assertLinesInOrder(t, "mosquitto.acl", string(acl), []string{"pattern write site/%u/event", "user controller", "topic write site/+/cmd",
		"user controller-b", "topic write site/+/cmd"})
	if _, _, err := runPKI(t, "mosquitto", "--dir", dir, "--controller", "d1"); err == nil || !strings.Contains(err.Error(), "not a controller's CN") {
		t.Errorf("mosquitto --controller d1: %v, want a refusal", err)
	}
	if !strings.Contains(out, "mosquitto -c "+filepath.Join(dir, "mosquitto.conf")) {
		t.Errorf("mosquitto output does not say how to run it:\n%s", out)
	}
	mustPKI(t, "mosquitto", "--dir", dir, "--cert-dir", "/etc/mosquitto/certs")
	conf, _ = os.ReadFile(filepath.Join(dir, "mosquitto.conf"))
	assertLinesInOrder(t, "mosquitto.conf", string(conf), []string{"acl_file /etc/mosquitto/certs/mosquitto.acl", "keyfile /etc/mosquitto/certs/server.key"})

	// Every private key is 0600.
	keys, _ := filepath.Glob(filepath.Join(dir, "*.key"))
	more, _ := filepath.Glob(filepath.Join(dir, "devices", "*", "*.key"))
	keys = append(keys, more...)
	if len(keys) != 6 {
		t.Errorf("keys %v, want ca, server, controller, controller-b, d1, d2", keys)
	}
	for _, k := range keys {
		if m := fileMode(t, k); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", k, m)
		}
	}
	for _, c := range []string{"ca.crt", "server.crt", "controller.crt", "controller-b.crt", "devices/d1/device.crt", "devices/d1/ca.crt"} {
		if m := fileMode(t, filepath.Join(dir, c)); m != 0o644 {
			t.Errorf("%s mode %v, want 0644", c, m)
		}
	}
}

func TestPKIErrors(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	empty := filepath.Join(t.TempDir(), "empty")
	mustPKI(t, "init", "--dir", dir)
	mustPKI(t, "device", "d1", "--dir", dir)
	tests := []struct {
		name string
		args []string
		want string // in the error
	}{
		{"no command", nil, "command is required"},
		{"unknown command", []string{"frobnicate"}, `unknown command "frobnicate"`},
		{"init twice", []string{"init", "--dir", dir}, "--force"},
		{"no CA", []string{"device", "d1", "--dir", empty}, "pki init"},
		{"device controller", []string{"device", "controller", "--dir", dir}, "pki controller"},
		{"bad device id", []string{"device", "Bad/ID", "--dir", dir}, "invalid id"},
		{"device exists", []string{"device", "d1", "--dir", dir}, "--force"},
		{"no device id", []string{"device", "--dir", dir}, "missing device ID"},
		{"two device ids", []string{"device", "d2", "d3", "--dir", dir}, `unexpected argument "d3"`},
		{"server without host", []string{"server", "--dir", dir}, "--host"},
		{"server host with port", []string{"server", "--host", "b:8883", "--dir", dir}, "without a port"},
		{"unknown flag", []string{"device", "d2", "--nope", "--dir", dir}, "nope"},
		{"mosquitto without server", []string{"mosquitto", "--dir", dir}, "pki server"},
		{"controller bad name", []string{"controller", "--name", "B/1", "--dir", dir}, "controller name"},
		{"controller name with prefix", []string{"controller", "--name", "controller-b", "--dir", dir}, "give the name alone"},
		{"controller without a CA", []string{"controller", "--name", "x", "--dir", empty}, "pki init"},
		{"sign missing file", []string{"sign", filepath.Join(dir, "none.csr"), "--dir", dir}, "none.csr"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := runPKI(t, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("pki %q: %v, want an error containing %q", tt.args, err, tt.want)
			}
		})
	}
	// A forced re-issue replaces the bundle.
	before, _ := os.ReadFile(filepath.Join(dir, "devices", "d1", "device.key"))
	mustPKI(t, "device", "d1", "--dir", dir, "--force")
	after, _ := os.ReadFile(filepath.Join(dir, "devices", "d1", "device.key"))
	if bytes.Equal(before, after) {
		t.Error("--force kept the old key")
	}
}

// TestPKIKeepsKeys: no command replaces an existing key without --force,
// even when its certificate is gone: the key may be the only copy of one a
// device or the broker still uses.
func TestPKIKeepsKeys(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	mustPKI(t, "init", "--dir", dir, "--name", "test fleet")
	if cn := readCert(t, filepath.Join(dir, "ca.crt")).Subject.CommonName; cn != "Thermofleet CA test fleet" {
		t.Errorf("pki init --name: CA named %q", cn)
	}
	csrPEM, _, err := provisioning.NewCSR("d2")
	if err != nil {
		t.Fatal(err)
	}
	csrFile := filepath.Join(t.TempDir(), "d2.csr")
	if err := os.WriteFile(csrFile, csrPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name       string
		issue      []string
		cert, key  string
		reissue    []string // after the certificate is removed
		keyReplace bool     // a forced reissue makes a new key
	}{
		{"server", []string{"server", "--host", "localhost"}, "server.crt", "server.key", nil, true},
		{"controller", []string{"controller"}, "controller.crt", "controller.key", nil, true},
		{"device", []string{"device", "d1"}, "devices/d1/device.crt", "devices/d1/device.key", nil, true},
		// A key left by `pki device d2` would be deleted by a sign for d2.
		{"sign over a device bundle", []string{"device", "d2"}, "devices/d2/device.crt", "devices/d2/device.key", []string{"sign", csrFile}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			mustPKI(t, append(tt.issue, "--dir", dir)...)
			certFile, keyFile := filepath.Join(dir, tt.cert), filepath.Join(dir, tt.key)
			key, err := os.ReadFile(keyFile)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(certFile); err != nil {
				t.Fatal(err)
			}
			reissue := tt.reissue
			if reissue == nil {
				reissue = tt.issue
			}
			_, _, err = runPKI(t, append(reissue, "--dir", dir)...)
			if err == nil || !strings.Contains(err.Error(), keyFile) || !strings.Contains(err.Error(), "--force") {
				t.Errorf("pki %q with %s but no certificate: %v, want a refusal naming the key and --force", reissue, tt.key, err)
			}
			if now, err := os.ReadFile(keyFile); err != nil || !bytes.Equal(now, key) {
				t.Fatalf("refused command changed %s (%v)", keyFile, err)
			}
			mustPKI(t, append(reissue, "--dir", dir, "--force")...)
			now, err := os.ReadFile(keyFile)
			switch {
			case tt.keyReplace && (err != nil || bytes.Equal(now, key)):
				t.Errorf("--force: %s not replaced (%v)", keyFile, err)
			case !tt.keyReplace && !os.IsNotExist(err):
				t.Errorf("--force sign: %s still there (%v): it does not match the signed certificate", keyFile, err)
			}
		})
	}
}

func TestPKIHelp(t *testing.T) {
	for _, args := range [][]string{{"help"}, {"-h"}, {"device", "-h"}, {"server", "--help"}} {
		out, errOut, err := runPKI(t, args...)
		if err != nil {
			t.Errorf("pki %q: %v", args, err)
		}
		if !strings.Contains(out+errOut, "Usage: controllerlite pki") {
			t.Errorf("pki %q printed no usage:\n%s%s", args, out, errOut)
		}
	}
}

// TestCSRFlow is the key-never-leaves-the-board path: thermostat csr on the
// device, pki sign on the controller host.
func TestCSRFlow(t *testing.T) {
	pkiDir, board := filepath.Join(t.TempDir(), "pki"), t.TempDir()
	mustPKI(t, "init", "--dir", pkiDir)

	var o, e bytes.Buffer
	if err := provisioning.RunCSR([]string{"--out", board, "--id", "kitchen"}, &o, &e); err != nil {
		t.Fatalf("csr: %v\n%s", err, e.String())
	}
	keyFile, csrFile := filepath.Join(board, "device.key"), filepath.Join(board, "kitchen.csr")
	if m := fileMode(t, keyFile); m != 0o600 {
		t.Errorf("device.key mode %v, want 0600", m)
	}
	if !strings.Contains(o.String(), "pki sign") {
		t.Errorf("csr output does not say what to do next:\n%s", o.String())
	}
	// A second csr would orphan the key: refused.
	if err := provisioning.RunCSR([]string{"--out", board, "--id", "kitchen"}, &o, &e); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second csr: %v, want a refusal naming --force", err)
	}
	if err := provisioning.RunCSR([]string{"--out", board, "--id", "controller"}, &o, &e); err == nil {
		t.Error("csr for controller succeeded")
	}

	out := mustPKI(t, "sign", csrFile, "--dir", pkiDir)
	certFile := filepath.Join(pkiDir, "devices", "kitchen", "device.crt")
	if !strings.Contains(out, certFile) {
		t.Errorf("sign output does not name %s:\n%s", certFile, out)
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("signed certificate does not pair with the board's key: %v", err)
	}
	if id, err := provisioning.DeviceID(certFile); err != nil || id != "kitchen" {
		t.Errorf("DeviceID = %q, %v", id, err)
	}
	if _, err := os.Stat(filepath.Join(pkiDir, "devices", "kitchen", "device.key")); !os.IsNotExist(err) {
		t.Errorf("a key appeared on the controller host: %v", err)
	}
	if _, _, err := runPKI(t, "sign", csrFile, "--dir", pkiDir); err == nil || !strings.Contains(err.Error(), "--force") {
		t.Errorf("second sign: %v, want a refusal naming --force", err)
	}
	outFile := filepath.Join(t.TempDir(), "kitchen.crt")
	mustPKI(t, "sign", "--out", outFile, csrFile, "--dir", pkiDir)
	if cn := readCert(t, outFile).Subject.CommonName; cn != "kitchen" {
		t.Errorf("--out certificate CN %q", cn)
	}
}
