package server

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func start(t *testing.T, cfg Config) *Server {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet
	}
	s, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	select {
	case <-s.Fleet().Ready():
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("controller not ready")
	}
	return s
}

func embedded(pki *testenv.PKI, dir string) Config {
	return Config{
		CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		DataDir: dir, HTTPAddr: "127.0.0.1:0", Listen: "127.0.0.1:0",
	}
}

func brokerURL(a net.Addr) string {
	_, port, _ := net.SplitHostPort(a.String())
	return "mqtts://localhost:" + port
}

// roundTrip: a device's event shows in the API; a set through the API
// reaches the device.
func roundTrip(t *testing.T, s *Server, pki *testenv.PKI, url, id string) {
	t.Helper()
	ctx := context.Background()
	dev := pki.Connect(t, url, id)
	dev.Subscribe(t, "thermo/"+id+"/cmd", 1)
	dev.Publish(t, "thermo/"+id+"/event", 1, true, []byte(`{"v":1,"vc":[0,1],"props":{"mode":{"val":"heat","w":[0,1]}}}`))

	c, err := api.NewClient(s.HTTPAddr().String(), "")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.After(testenv.WaitTimeout)
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := c.Device(ctx, id)
		if err == nil && d.VC[1] >= 1 {
			break
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("the event never showed in the API: %+v, %v", d, err)
		}
	}
	d, err := c.Set(ctx, id, map[string]any{"setpoint_c": 19.5})
	if err != nil {
		t.Fatal(err)
	}
	dev.WaitMatch(t, "the command", func(m testenv.Message) bool {
		cm, _, err := protocol.DecodeMessage(m.Payload)
		return err == nil && cm.VC == d.VC
	})
}

func TestEmbedded(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	s := start(t, embedded(pki, dir))
	if s.BrokerAddr() == nil {
		t.Fatal("no broker address")
	}
	roundTrip(t, s, pki, brokerURL(s.BrokerAddr()), "d1")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{store.FileName, filepath.Join(BrokerDir, "broker.db")} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("data dir: %v", err)
		}
	}

	// Restarted on the same data directory: the device is still known.
	s = start(t, embedded(pki, dir))
	if d, ok := s.Fleet().Device("d1"); !ok || d.Props[protocol.PropSetpoint].Val != 19.5 {
		t.Fatalf("after restart: %+v", d)
	}
}

func TestExternal(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, protocol.ControllerID)
	s := start(t, Config{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", Broker: m.URL()})
	if s.BrokerAddr() != nil {
		t.Fatal("a broker address with an external broker")
	}
	roundTrip(t, s, pki, m.URL(), "d1")
}

func TestConfigErrors(t *testing.T) {
	pki := testenv.NewPKI(t)
	d1Cert, d1Key := pki.Client(t, "d1")
	ok := embedded(pki, t.TempDir())
	tests := []struct {
		name string
		edit func(c *Config)
		want string
	}{
		{"no CA", func(c *Config) { c.CAFile = "" }, "--ca, --cert and --key"},
		{"no data dir", func(c *Config) { c.DataDir = "" }, "--data-dir"},
		{"listen and broker", func(c *Config) { c.Broker = "mqtts://localhost:1" }, "exclude each other"},
		{"plain broker", func(c *Config) { c.Listen = ""; c.Broker = "mqtt://localhost:1883" }, "plain-text"},
		{"store not PostgreSQL", func(c *Config) { c.Store = "/var/lib/controller.db" }, "--store: want a PostgreSQL URL"},
		{"store unreachable", func(c *Config) { c.Store = "postgres://thermo@127.0.0.1:1/none?connect_timeout=2" }, "--store: open store postgres://thermo@127.0.0.1:1/none"},
		{"failover without broker", func(c *Config) { c.Failover = []string{"mqtts://localhost:1"} }, "need a first --broker"},
		{"plain failover broker", func(c *Config) {
			c.Listen, c.Broker, c.Failover = "", "mqtts://localhost:1", []string{"mqtts://localhost:2", "mqtt://localhost:1883"}
		}, "plain-text"},
		{"server cert as client", func(c *Config) { c.Listen = ""; c.Broker = "mqtts://localhost:1" }, `has CN "localhost"`},
		{"device cert as client", func(c *Config) {
			c.Listen, c.Broker, c.CertFile, c.KeyFile = "", "mqtts://localhost:1", d1Cert, d1Key
		}, `CN "controller"`},
		{"open API without token", func(c *Config) { c.HTTPAddr = "0.0.0.0:0" }, "needs a token"},
		{"bad topic root", func(c *Config) { c.TopicRoot = "thermo/#" }, "--topic-root"},
		{"keep-alive under a second", func(c *Config) { c.KeepAlive = 500 * time.Millisecond }, "--keep-alive 500ms: MQTT counts keep-alive in whole seconds"},
		{"keep-alive not whole seconds", func(c *Config) { c.KeepAlive = 1500 * time.Millisecond }, "--keep-alive 1.5s"},
		{"Home Assistant broker not MQTT", func(c *Config) { c.HomeAssistant.Broker = "http://localhost:8123" }, "--ha-broker"},
		{"missing key", func(c *Config) { c.KeyFile = filepath.Join(t.TempDir(), "none") }, "broker TLS"},
		{"instance without PostgreSQL", func(c *Config) { c.Instance = "a" }, "--instance needs --store"},
		{"bad instance name", func(c *Config) {
			c.Instance, c.Store, c.Listen, c.Broker = "A!", "postgres://thermo@127.0.0.1:1/none", "", "mqtts://localhost:1"
		}, `--instance "A!"`},
		{"lease too short", func(c *Config) { c.Lease = 100 * time.Millisecond }, "--lease 100ms: at least 300ms"},
		{"negative client queue", func(c *Config) { c.BrokerClientQueue = -1 }, "--broker-client-queue -1: want 1 packet or more"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := ok
			tc.edit(&cfg)
			cfg.Logger = quiet
			s, err := Start(context.Background(), cfg)
			if err == nil {
				s.Close()
				t.Fatalf("started")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want %q", err, tc.want)
			}
		})
	}
}

// TestFailedStartLeavesNothingOpen: a start that fails late (the broker's
// port is taken) releases the API's port and the store.
func TestFailedStartLeavesNothingOpen(t *testing.T) {
	pki := testenv.NewPKI(t)
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	httpLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := httpLn.Addr().String()
	httpLn.Close()

	cfg := embedded(pki, t.TempDir())
	cfg.Listen, cfg.HTTPAddr, cfg.Logger = taken.Addr().String(), httpAddr, quiet
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "listen") {
		t.Fatalf("Start on a taken port: %v", err)
	}
	ln, err := net.Listen("tcp", httpAddr)
	if err != nil {
		t.Fatalf("the API's port was not released: %v", err)
	}
	ln.Close()
	st, err := store.Open(cfg.DataDir)
	if err != nil {
		t.Fatalf("the store was not released: %v", err)
	}
	st.Close()
}

// TestDataDirInUse: a second controller on the same data directory is
// refused with a clear reason; the first keeps running.
func TestDataDirInUse(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	s := start(t, embedded(pki, dir))
	cfg := embedded(pki, dir)
	cfg.Logger = quiet
	if _, err := Start(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "another controllerlite") {
		t.Fatalf("second Start: %v", err)
	}
	roundTrip(t, s, pki, brokerURL(s.BrokerAddr()), "d1")
}

// TestStopByContext: cancelling the context stops the controller cleanly.
func TestStopByContext(t *testing.T) {
	pki := testenv.NewPKI(t)
	ctx, cancel := context.WithCancel(context.Background())
	cfg := embedded(pki, t.TempDir())
	cfg.Logger = quiet
	s, err := Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	addr := s.HTTPAddr().String()
	cancel()
	select {
	case <-s.Done():
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("not stopped")
	}
	if err := s.Wait(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the API still accepts connections")
	}
}

// TestExternalKeepAlive: the link to an external broker uses the configured
// keep-alive, so a broker that hangs with its socket open is dropped within
// it (with the default 15 s it would still look connected).
func TestExternalKeepAlive(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, protocol.ControllerID)
	const ka = time.Second
	s := start(t, Config{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0",
		Broker: m.URL(), KeepAlive: ka, Logger: quiet})
	waitFor := func(what string, within time.Duration, cond func() bool) time.Duration {
		t.Helper()
		began := time.Now()
		for !cond() {
			if time.Since(began) > within {
				t.Fatalf("%s: not within %v", what, within)
			}
			time.Sleep(5 * time.Millisecond) // polling the fleet's link state, bounded above
		}
		return time.Since(began)
	}
	waitFor("connected", testenv.WaitTimeout, func() bool { return s.Fleet().Status().Connected })
	m.Stop()
	t.Cleanup(m.Cont)
	if d := waitFor("hang noticed", 5*ka, func() bool { return !s.Fleet().Status().Connected }); d > ka*3/2 {
		t.Errorf("hang noticed after %v, want within 1.5 × keep-alive %v", d, ka)
	}
	m.Cont()
	waitFor("back after the broker resumed", testenv.WaitTimeout, func() bool { return s.Fleet().Status().Connected })
}

// TestHistory: live telemetry goes into DataDir/history.db; samples still
// waiting to be written at shutdown are written then, and the API serves
// them after a restart.
func TestHistory(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	s := start(t, embedded(pki, dir))
	dev := pki.Connect(t, brokerURL(s.BrokerAddr()), "d1")
	dev.Publish(t, "thermo/d1/event", 1, true, []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":21,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}}`))
	testenv.WaitFor(t, "the event", func() bool { d, ok := s.Fleet().Device("d1"); return ok && d.VC[1] == 1 })
	dev.Publish(t, "thermo/d1/telemetry", 0, false, []byte(`{"v":1,"ts":"2026-12-03T00:00:00Z","temp_c":20.25,"heat":true,"cool":false,"sensor_ok":true}`))
	testenv.WaitFor(t, "the telemetry", func() bool { d, _ := s.Fleet().Device("d1"); return strings.Contains(string(d.Telemetry), "20.25") })
	if err := s.Close(); err != nil { // within the flush interval: Close writes the sample
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "history.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("history.db: %v, %v", fi, err)
	}

	s = start(t, embedded(pki, dir))
	resp, err := http.Get("http://" + s.HTTPAddr().String() + "/api/devices/d1/history?step=1h")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"min": 20.25`) || !strings.Contains(string(body), `"setpoint_c": 21`) ||
		!strings.Contains(string(body), `"samples": 1`) {
		t.Fatalf("history after restart: %d %s", resp.StatusCode, body)
	}
}
