package aedes

import (
	"bufio"
	"crypto/tls"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	paho "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/internal/testenv"
)

// aedes is a running server.js.
type aedes struct {
	url string
	mu  sync.Mutex
	log []string
	new chan struct{}

	cmd    *exec.Cmd
	exited chan error
	killed bool
}

// kill ends the node with SIGKILL, as a crash would, and waits for it.
func (a *aedes) kill(t *testing.T) {
	t.Helper()
	a.killed = true
	a.cmd.Process.Kill()
	<-a.exited
}

func (a *aedes) lines() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]string(nil), a.log...)
}

// waitLog waits for a log line containing every one of parts.
func (a *aedes) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.After(testenv.WaitTimeout)
	for {
		for _, l := range a.lines() {
			ok := true
			for _, p := range parts {
				ok = ok && strings.Contains(l, p)
			}
			if ok {
				return
			}
		}
		select {
		case <-a.new:
		case <-deadline:
			t.Fatalf("no aedes log line with %q; log:\n%s", parts, strings.Join(a.lines(), "\n"))
		}
	}
}

// ensureNodeModules runs `npm ci` here if node_modules is missing: the
// test needs the packages of package-lock.json, from the npm registry the
// first time.
func ensureNodeModules(t *testing.T) {
	t.Helper()
	missing := false
	for _, pkg := range []string{"aedes", "mqemitter-redis", "aedes-persistence-redis"} {
		if _, err := os.Stat(filepath.Join("node_modules", pkg, "package.json")); err != nil {
			missing = true
		}
	}
	if !missing {
		return
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("npm ci in brokers/aedes: %v\n%s", err, out)
	}
}

// startAedes runs server.js on a free loopback port with pki's server
// credentials (and extra flags) and stops it when the test ends.
func startAedes(t *testing.T, pki *testenv.PKI, extra ...string) *aedes {
	t.Helper()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	ensureNodeModules(t)
	cmd := exec.Command("node", "server.js", "--port", "0", "--host", "127.0.0.1",
		"--ca", pki.CAFile, "--cert", pki.ServerCert, "--key", pki.ServerKey)
	cmd.Args = append(cmd.Args, extra...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	a := &aedes{new: make(chan struct{}, 1), cmd: cmd, exited: exited}
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			a.mu.Lock()
			a.log = append(a.log, sc.Text())
			a.mu.Unlock()
			select {
			case a.new <- struct{}{}:
			default:
			}
		}
	}()
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if p, ok := strings.CutPrefix(sc.Text(), "aedes ready port="); ok {
				ready <- p
			}
		}
		close(ready)
	}()
	t.Cleanup(func() {
		if a.killed {
			return
		}
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				t.Errorf("aedes exit after SIGTERM: %v; log:\n%s", err, strings.Join(a.lines(), "\n"))
			}
		case <-time.After(5 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Error("aedes did not exit on SIGTERM")
		}
	})
	select {
	case port, ok := <-ready:
		if !ok {
			<-logDone
			go func() { exited <- cmd.Wait() }()
			t.Fatalf("aedes exited before it was ready:\n%s", strings.Join(a.lines(), "\n"))
		}
		go func() { exited <- cmd.Wait() }()
		a.url = "mqtts://127.0.0.1:" + port
		return a
	case <-time.After(testenv.WaitTimeout):
		go func() { exited <- cmd.Wait() }()
		t.Fatalf("aedes not ready:\n%s", strings.Join(a.lines(), "\n"))
	}
	return nil
}

func TestAedesIdentity(t *testing.T) {
	pki := testenv.NewPKI(t)
	a := startAedes(t, pki)
	d1Cert, d1Key := pki.Client(t, "d1")
	ctrlCert, ctrlKey := pki.Client(t, "controller")
	foreignCert, foreignKey := pki.ForeignClient(t, "d1")
	longID := strings.Repeat("a", 63)
	longCert, longKey := pki.Client(t, longID)
	ctrlBCert, ctrlBKey := pki.ClientWithCN(t, "controller-b")
	prefixCert, prefixKey := pki.ClientWithCN(t, "controller-")
	tests := []struct {
		name    string
		opts    testenv.ClientOptions
		refused bool
		logged  string
	}{
		{"device", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key}, false, ""},
		{"controller", testenv.ClientOptions{CertFile: ctrlCert, KeyFile: ctrlKey}, false, ""},
		{"63-character device id", testenv.ClientOptions{CertFile: longCert, KeyFile: longKey}, false, ""},
		{"another controller", testenv.ClientOptions{CertFile: ctrlBCert, KeyFile: ctrlBKey}, false, ""},
		{"bare controller prefix", testenv.ClientOptions{CertFile: prefixCert, KeyFile: prefixKey}, true, "not a valid device id or controller name"},
		{"no certificate", testenv.ClientOptions{ClientID: "d1"}, true, "TLS handshake failed"},
		{"foreign CA", testenv.ClientOptions{CertFile: foreignCert, KeyFile: foreignKey}, true, "TLS handshake failed"},
		{"client id is not the CN", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key, ClientID: "d2"}, true, "does not match certificate CN"},
		{"will on another device's topic", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key,
			Will: &testenv.Message{Topic: "thermo/d2/status", Payload: []byte("x"), QoS: 1, Retained: true}}, true, "will topic"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.CAFile = pki.CAFile
			c, err := testenv.Dial(a.url, tc.opts)
			if c != nil {
				defer c.Close()
			}
			if tc.refused != (err != nil) {
				t.Fatalf("Dial: err = %v, want refused = %v", err, tc.refused)
			}
			if tc.logged != "" {
				a.waitLog(t, tc.logged)
			}
		})
	}
}

func TestAedesACL(t *testing.T) {
	pki := testenv.NewPKI(t)
	a := startAedes(t, pki)
	ctrl := pki.Connect(t, a.url, "controller")
	d1 := pki.Connect(t, a.url, "d1")
	d2 := pki.Connect(t, a.url, "d2")

	subs := []struct {
		c       *testenv.Client
		filter  string
		allowed bool
	}{
		{d1, "thermo/d1/#", true},
		{d1, "thermo/d2/cmd", false},
		{d1, "thermo/+/cmd", false},
		{d1, "thermo/#", false},
		{d1, "#", false},
		{ctrl, "thermo/#", true},
		{ctrl, "#", false},
		{d2, "thermo/d2/#", true},
	}
	for _, s := range subs {
		if err := s.c.SubscribeErr(s.filter, 1); s.allowed != (err == nil) {
			t.Errorf("subscribe %s: err = %v, want allowed = %v", s.filter, err, s.allowed)
		}
	}

	// Controller to device, retained; device to controller.
	ctrl.Publish(t, "thermo/d1/cmd", 1, true, []byte("for d1"))
	d1.WaitPayload(t, "thermo/d1/cmd", "for d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("from d1"))
	ctrl.WaitPayload(t, "thermo/d1/event", "from d1")

	// A forbidden publish is acknowledged, dropped, and d1 stays connected:
	// once d1's next message arrives, the forbidden one would have too.
	for i, qos := range []byte{0, 1, 2} {
		d1.Publish(t, "thermo/d2/cmd", qos, true, []byte("forbidden"))
		marker := "marker " + string(rune('a'+i))
		d1.Publish(t, "thermo/d1/event", 1, false, []byte(marker))
		ctrl.WaitPayload(t, "thermo/d1/event", marker)
	}
	a.waitLog(t, "publish dropped", `client="d1"`, `topic="thermo/d2/cmd"`)
	for _, c := range []*testenv.Client{ctrl, d2} {
		for _, m := range c.Messages() {
			if string(m.Payload) == "forbidden" {
				t.Errorf("forbidden publish delivered on %s", m.Topic)
			}
		}
	}
	if !d1.Paho.IsConnectionOpen() {
		t.Error("d1 was disconnected for a forbidden publish")
	}
	// And nothing of it was retained.
	late := pki.Connect(t, a.url, "controller") // takes over ctrl's session
	late.Subscribe(t, "thermo/d2/#", 1)
	late.Subscribe(t, "thermo/d1/event", 1)
	late.WaitPayload(t, "thermo/d1/event", "from d1") // retained, sent after thermo/d2/# retained ones
	for _, m := range late.Messages() {
		if strings.HasPrefix(m.Topic, "thermo/d2/") {
			t.Errorf("retained on %s: %q", m.Topic, m.Payload)
		}
	}
}

// TestAedesWill: a device's will reaches the controller when its
// connection breaks without DISCONNECT.
func TestAedesWill(t *testing.T) {
	pki := testenv.NewPKI(t)
	a := startAedes(t, pki)
	ctrl := pki.Connect(t, a.url, "controller")
	ctrl.Subscribe(t, "thermo/+/status", 1)

	certFile, keyFile := pki.Client(t, "d1")
	tlsConf := pki.ClientTLS(t, certFile, keyFile)
	tlsConf.ServerName = "127.0.0.1"
	var mu sync.Mutex
	var raw net.Conn
	opts := paho.NewClientOptions().AddBroker(a.url).SetClientID("d1").SetAutoReconnect(false).
		SetWill("thermo/d1/status", `{"v":1,"online":false}`, 1, true).
		SetCustomOpenConnectionFn(func(u *url.URL, _ paho.ClientOptions) (net.Conn, error) {
			c, err := net.DialTimeout("tcp", u.Host, testenv.WaitTimeout)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			raw = c
			mu.Unlock()
			return tls.Client(c, tlsConf), nil
		})
	d1 := paho.NewClient(opts)
	if tok := d1.Connect(); !tok.WaitTimeout(testenv.WaitTimeout) || tok.Error() != nil {
		t.Fatalf("connect d1: %v", tok.Error())
	}
	defer d1.Disconnect(0)
	if tok := d1.Publish("thermo/d1/status", 1, true, `{"v":1,"online":true}`); !tok.WaitTimeout(testenv.WaitTimeout) || tok.Error() != nil {
		t.Fatalf("publish: %v", tok.Error())
	}
	ctrl.WaitPayload(t, "thermo/d1/status", `{"v":1,"online":true}`)
	mu.Lock()
	raw.Close()
	mu.Unlock()
	m, _ := ctrl.WaitPayload(t, "thermo/d1/status", `{"v":1,"online":false}`)
	if m.Retained {
		t.Error("live will delivered flagged retained")
	}
}
