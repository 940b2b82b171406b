package ota

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestReleaseServer: a device of the fleet fetches a release, in part
// with a Range; a certificate of another CA, none, or a CN that is not a
// device of the fleet does not get past the handshake; only plain file
// names of the directory are served.
func TestReleaseServer(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "thermostat-1.1.0"), []byte("0123456789"), 0o644)
	os.WriteFile(filepath.Join(filepath.Dir(dir), "secret"), []byte("secret"), 0o644)
	pair, err := tls.LoadX509KeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ListenReleases(ServerOptions{Listen: "127.0.0.1:0", Dir: dir, CAFile: pki.CAFile,
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := fmt.Sprintf("https://localhost:%d%s", srv.Addr().(*net.TCPAddr).Port, ReleasesPath)
	get := func(conf *tls.Config, path, rng string) (int, string, error) {
		c := &http.Client{Transport: &http.Transport{TLSClientConfig: conf}}
		defer c.CloseIdleConnections()
		req, _ := http.NewRequest(http.MethodGet, base+path, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := c.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	conf := func(cert, key string) *tls.Config { return pki.ClientTLS(t, cert, key) }
	device := conf(pki.Client(t, "d1"))
	for _, tc := range []struct {
		name       string
		conf       *tls.Config
		path, rng  string
		status     int
		body       string
		handshakes bool
	}{
		{"whole", device, "thermostat-1.1.0", "", 200, "0123456789", true},
		{"resumed", device, "thermostat-1.1.0", "bytes=6-", 206, "6789", true},
		{"missing", device, "thermostat-9", "", 404, "", true},
		{"outside the directory", device, "..%2fsecret", "", 404, "", true},
		{"hidden", device, ".thermostat", "", 404, "", true},
		{"the controller", conf(pki.ClientWithCN(t, "controller")), "thermostat-1.1.0", "", 200, "0123456789", true},
		{"another CA", conf(pki.ForeignClient(t, "d1")), "thermostat-1.1.0", "", 0, "", false},
		{"no certificate", &tls.Config{RootCAs: device.RootCAs, ServerName: "localhost"}, "thermostat-1.1.0", "", 0, "", false},
		{"not a device id", conf(pki.ClientWithCN(t, "Bad")), "thermostat-1.1.0", "", 0, "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, body, err := get(tc.conf, tc.path, tc.rng)
			if !tc.handshakes {
				if err == nil {
					t.Fatalf("served (%d) without a device certificate of the fleet", status)
				}
				return
			}
			if err != nil || status != tc.status || (tc.body != "" && body != tc.body) {
				t.Fatalf("%d %q %v, want %d %q", status, body, err, tc.status, tc.body)
			}
		})
	}
}
