package e2e

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/runner"
	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// waitTimeout bounds every wait for a condition. Generous: the race
// detector on two shared cores slows everything down several times.
const waitTimeout = 20 * time.Second

// brokerKind is one of the two brokers every scenario runs against.
type brokerKind string

const (
	// embedded is the broker controllerlite runs in its own process.
	embedded brokerKind = "embedded"
	// mosquitto is a real Mosquitto started by the test with the
	// configuration `controllerlite pki mosquitto` generates;
	// controllerlite reaches it with --broker and its client certificate.
	mosquitto brokerKind = "mosquitto"
)

var brokerKinds = []brokerKind{embedded, mosquitto}

// eachBroker runs f once per broker, as subtests named after the broker.
func eachBroker(t *testing.T, f func(t *testing.T, kind brokerKind)) {
	t.Helper()
	for _, k := range brokerKinds {
		t.Run(string(k), func(t *testing.T) { f(t, k) })
	}
}

// eventually polls cond until it holds or waitTimeout passes; cond returns
// what it saw, for the failure message.
func eventually(t testing.TB, what string, cond func() (bool, string)) {
	t.Helper()
	testenv.Eventually(t, waitTimeout, what, cond)
}

// --- logs ---

// logBook gathers the log lines of every part of a test, one line per
// record, so a test can wait for a line (a refusal with its reason) and a
// failed test shows what happened.
type logBook struct {
	mu    sync.Mutex
	lines []string
}

// newLogBook returns a book whose lines are printed when the test fails,
// or always with E2E_LOGS=1 in the environment.
func newLogBook(t *testing.T) *logBook {
	b := &logBook{}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("E2E_LOGS") == "1" {
			b.mu.Lock()
			defer b.mu.Unlock()
			t.Logf("logs:\n%s", strings.Join(b.lines, "\n"))
		}
	})
	return b
}

// Write takes one record of a slog.TextHandler.
func (b *logBook) Write(p []byte) (int, error) {
	b.mu.Lock()
	b.lines = append(b.lines, strings.TrimRight(string(p), "\n"))
	b.mu.Unlock()
	return len(p), nil
}

// logger returns a debug-level logger into the book, every line tagged
// with who.
func (b *logBook) logger(who string) *slog.Logger {
	return slog.New(slog.NewTextHandler(b, &slog.HandlerOptions{Level: slog.LevelDebug})).With("who", who)
}

// mark is a position in the book, for waiting on lines written after it.
func (b *logBook) mark() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.lines)
}

// find returns the first line after mark containing every one of parts.
func (b *logBook) find(mark int, parts ...string) (string, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, l := range b.lines[min(mark, len(b.lines)):] {
		all := true
		for _, p := range parts {
			if !strings.Contains(l, p) {
				all = false
				break
			}
		}
		if all {
			return l, true
		}
	}
	return "", false
}

// wait waits for a line after mark containing every one of parts.
func (b *logBook) wait(t testing.TB, mark int, parts ...string) string {
	t.Helper()
	var line string
	eventually(t, fmt.Sprintf("a log line with %q", parts), func() (bool, string) {
		var ok bool
		line, ok = b.find(mark, parts...)
		return ok, fmt.Sprintf("%d lines", b.mark()-mark)
	})
	return line
}

// --- the world: PKI, broker, controller ---

// world is one fleet under test: a PKI, a broker of the given kind on a
// loopback port that stays the same across restarts, and (unless a test
// asks otherwise) controllerlite in process, on its own data directory.
type world struct {
	t    *testing.T
	kind brokerKind
	pki  *testenv.PKI
	logs *logBook

	// serverCert and serverKey are the broker's credentials, the PKI's
	// server certificate unless a test says otherwise.
	serverCert, serverKey string
	// crlFile, when set before the broker starts, is Mosquitto's crlfile.
	crlFile string

	port int
	mq   *testenv.Mosquitto // kind mosquitto
	// mqControllers are further controller CNs Mosquitto's ACL lists.
	mqControllers []string
	bare          *broker.Broker // kind embedded without a controller
	ctlDir        string
	srv           *server.Server
	api           *api.Client
}

// newWorld starts a broker of kind and a controller on it.
func newWorld(t *testing.T, kind brokerKind) *world {
	w := newBareWorld(t, kind)
	w.startController()
	return w
}

// newBareWorld starts a broker of kind with no controller: the embedded
// broker alone (package broker, as controllerlite embeds it), or Mosquitto.
// A test client may then act as the controller.
// Options run in order before anything starts.
func newBareWorld(t *testing.T, kind brokerKind, opts ...func(*world)) *world {
	t.Helper()
	w := &world{t: t, kind: kind, pki: testenv.NewPKI(t), logs: newLogBook(t), ctlDir: filepath.Join(t.TempDir(), "controller")}
	w.serverCert, w.serverKey = w.pki.ServerCert, w.pki.ServerKey
	for _, o := range opts {
		o(w)
	}
	switch kind {
	case mosquitto:
		// The broker's own certificate may differ from the PKI's; the CA
		// its clients' certificates must chain to does not.
		pki := &testenv.PKI{CAFile: w.pki.CAFile, ServerCert: w.serverCert, ServerKey: w.serverKey}
		w.mq = testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Persistence: true, CRLFile: w.crlFile, Controllers: w.mqControllers})
		w.port = w.mq.Port()
	case embedded:
		w.port = testenv.FreePort(t)
	}
	return w
}

// startBareBroker starts the embedded broker without a controller.
func (w *world) startBareBroker() {
	w.t.Helper()
	if w.kind != embedded {
		return
	}
	b, err := broker.New(broker.Options{
		Listen: w.brokerAddr(), CAFile: w.pki.CAFile, CertFile: w.serverCert, KeyFile: w.serverKey,
		DataDir: filepath.Join(w.t.TempDir(), "broker"), Logger: w.logs.logger("broker"),
	})
	if err != nil {
		w.t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		w.t.Fatal(err)
	}
	w.bare = b
	w.t.Cleanup(func() { b.Close() })
}

func (w *world) brokerAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(w.port)) }

// brokerURL is what clients dial: "localhost" is a name the server
// certificate carries, so the host name check is real.
func (w *world) brokerURL() string { return "mqtts://localhost:" + strconv.Itoa(w.port) }

// controllerConfig is `controllerlite serve` for this world: the embedded
// broker on the world's port with the server certificate, or --broker with
// the controller's client certificate.
func (w *world) controllerConfig() server.Config {
	cfg := server.Config{
		CAFile: w.pki.CAFile, DataDir: w.ctlDir, HTTPAddr: "127.0.0.1:0",
		Logger: w.logs.logger("controller"),
	}
	switch w.kind {
	case embedded:
		cfg.CertFile, cfg.KeyFile = w.serverCert, w.serverKey
		cfg.Listen = w.brokerAddr()
	case mosquitto:
		cfg.CertFile, cfg.KeyFile = w.pki.Client(w.t, protocol.ControllerID)
		cfg.Broker = w.brokerURL()
	}
	return cfg
}

// startController starts controllerlite in process and waits until it has
// read the broker's retained state.
func (w *world) startController() {
	w.t.Helper()
	if w.srv != nil {
		w.t.Fatal("controller already running")
	}
	s, err := server.Start(context.Background(), w.controllerConfig())
	if err != nil {
		w.t.Fatalf("start controller: %v", err)
	}
	w.srv = s
	w.t.Cleanup(func() { s.Close() })
	select {
	case <-s.Fleet().Ready():
	case <-s.Done():
		w.t.Fatalf("controller stopped while starting: %v", s.Wait())
	case <-time.After(waitTimeout):
		w.t.Fatal("controller not ready")
	}
	if w.api, err = api.NewClient(s.HTTPAddr().String(), ""); err != nil {
		w.t.Fatal(err)
	}
}

// stopController stops it cleanly; with the embedded broker the broker
// goes with it.
func (w *world) stopController() {
	w.t.Helper()
	if w.srv == nil {
		return
	}
	mark := w.logs.mark()
	if err := w.srv.Close(); err != nil {
		w.t.Fatalf("controller stopped with %v", err)
	}
	w.srv = nil
	// A clean stop is not an error, and must not be logged as one.
	if line, ok := w.logs.find(mark, "level=ERROR", "who=controller"); ok {
		w.t.Errorf("a clean stop of the controller logged an error: %s", line)
	}
}

// brokerDown takes the broker away: Mosquitto is killed (SIGKILL), the
// embedded broker stops with its controller.
func (w *world) brokerDown() {
	w.t.Helper()
	switch w.kind {
	case mosquitto:
		w.mq.Kill()
	case embedded:
		w.stopController()
	}
}

// brokerUp brings it back on the same port with what it had persisted.
func (w *world) brokerUp() {
	w.t.Helper()
	switch w.kind {
	case mosquitto:
		w.mq.Start()
	case embedded:
		w.startController()
	}
}

// wipeBroker restarts the broker without its persisted data: every
// retained message and session is lost. The controller keeps its store.
func (w *world) wipeBroker() {
	w.t.Helper()
	switch w.kind {
	case mosquitto:
		w.mq.Kill()
		w.mq.WipeData()
		w.mq.Start()
	case embedded:
		w.stopController()
		if err := os.RemoveAll(filepath.Join(w.ctlDir, server.BrokerDir)); err != nil {
			w.t.Fatal(err)
		}
		w.startController()
	}
}

// wipeController restarts the controller without its store; the broker
// (the embedded one's own store included) keeps everything.
func (w *world) wipeController() {
	w.t.Helper()
	w.stopController()
	if err := os.Remove(filepath.Join(w.ctlDir, store.FileName)); err != nil {
		w.t.Fatal(err)
	}
	w.startController()
}

// ctl returns the controller's view of a device through the HTTP API.
func (w *world) ctl(id string) (fleet.Device, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return w.api.Device(ctx, id)
}

// mustCtl is ctl failing the test on error.
func (w *world) mustCtl(id string) fleet.Device {
	w.t.Helper()
	d, err := w.ctl(id)
	if err != nil {
		w.t.Fatalf("GET device %s: %v", id, err)
	}
	return d
}

// set is a remote user's write through the HTTP API.
func (w *world) set(id string, changes map[string]any) fleet.Device {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	d, err := w.api.Set(ctx, id, changes)
	if err != nil {
		w.t.Fatalf("PUT device %s %v: %v", id, changes, err)
	}
	return d
}

// --- thermostats ---

// thermostat is one simulated thermostat run in process by firmware/runner,
// exactly as `thermostat run --hal sim` runs it, optionally reaching the
// broker through a proxy that can hold its traffic.
type thermostat struct {
	w     *world
	id    string
	cfg   config.Config
	proxy *holdproxy.Proxy

	th     *runner.Thermostat
	cancel context.CancelFunc
	done   chan error
}

type thermostatOptions struct {
	// proxy puts a holdproxy between the thermostat and the broker.
	proxy bool
	// syncTimeout of a rejoin; the default (10 s) when 0.
	syncTimeout time.Duration
}

// newThermostat issues the device certificate and prepares the thermostat's
// configuration and state directory; start runs it.
func (w *world) newThermostat(id string, o thermostatOptions) *thermostat {
	w.t.Helper()
	d := &thermostat{w: w, id: id}
	url := w.brokerURL()
	if o.proxy {
		p, err := holdproxy.Listen("127.0.0.1:0", w.brokerAddr())
		if err != nil {
			w.t.Fatal(err)
		}
		d.proxy = p
		w.t.Cleanup(func() { p.Close() })
		url = "mqtts://localhost:" + strconv.Itoa(p.Addr().(*net.TCPAddr).Port)
	}
	cert, key := w.pki.Client(w.t, id)
	cfg := config.Default()
	cfg.Broker, cfg.CA, cfg.Cert, cfg.Key = url, w.pki.CAFile, cert, key
	cfg.HAL = config.HALSim
	cfg.StateDir = filepath.Join(w.t.TempDir(), id+"-state")
	cfg.ControlSocket = filepath.Join(w.t.TempDir(), "ctl.sock") // unused: NoControlSocket
	if o.syncTimeout > 0 {
		cfg.SyncTimeout = o.syncTimeout
	}
	if err := cfg.Validate(); err != nil {
		w.t.Fatal(err)
	}
	d.cfg = cfg
	w.t.Cleanup(d.stop)
	return d
}

// start runs the thermostat from whatever its state directory holds.
func (d *thermostat) start() {
	d.w.t.Helper()
	if d.th != nil {
		d.w.t.Fatalf("%s already running", d.id)
	}
	th, err := runner.New(d.cfg, runner.Options{Logger: d.w.logs.logger(d.id), NoControlSocket: true})
	if err != nil {
		d.w.t.Fatalf("start %s: %v", d.id, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	d.th, d.cancel, d.done = th, cancel, make(chan error, 1)
	go func() { d.done <- th.Run(ctx) }()
}

// stop stops it cleanly (status offline is published) and waits.
func (d *thermostat) stop() {
	if d.th == nil {
		return
	}
	d.cancel()
	select {
	case err := <-d.done:
		if err != nil {
			d.w.t.Errorf("%s stopped with %v", d.id, err)
		}
	case <-time.After(waitTimeout):
		d.w.t.Errorf("%s did not stop", d.id)
	}
	d.th = nil
}

// wipeState deletes the state directory, as a re-imaged card would have.
func (d *thermostat) wipeState() {
	d.w.t.Helper()
	if d.th != nil {
		d.w.t.Fatalf("wipe the state of a running %s", d.id)
	}
	if err := os.RemoveAll(d.cfg.StateDir); err != nil {
		d.w.t.Fatal(err)
	}
}

// status is what `thermostat status` prints.
func (d *thermostat) status() agent.Status {
	d.w.t.Helper()
	if d.th == nil {
		d.w.t.Fatalf("%s is not running", d.id)
	}
	return d.th.Agent().Snapshot()
}

// set is a change made at the device (`thermostat set`); it returns once
// the change is saved.
func (d *thermostat) set(changes map[string]any) {
	d.w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	if err := d.th.Agent().Set(ctx, changes); err != nil {
		d.w.t.Fatalf("local set on %s %v: %v", d.id, changes, err)
	}
}

// waitSynced waits until the thermostat and the controller agree: the
// device is connected and done rejoining, the controller has it online,
// and both hold the same values with the same stamps. It returns both
// views.
func (d *thermostat) waitSynced() (agent.Status, fleet.Device) {
	d.w.t.Helper()
	var st agent.Status
	var c fleet.Device
	eventually(d.w.t, d.id+" and the controller in agreement", func() (bool, string) {
		st = d.status()
		var err error
		c, err = d.w.ctl(d.id)
		if err != nil {
			return false, err.Error()
		}
		seen := fmt.Sprintf("device %v %v connected=%v rejoining=%v; controller %v %v online=%v",
			st.VC, st.Props, st.Connected, st.Rejoining, c.VC, c.Props, c.Online)
		return st.Connected && !st.Rejoining && c.Online && sameProps(st.Props, c.Props), seen
	})
	return st, c
}

// sameProps compares values and stamps.
func sameProps(a, b protocol.Props) bool {
	if len(a) != len(b) {
		return false
	}
	for k, pa := range a {
		pb, ok := b[k]
		if !ok || pa.W != pb.W || !reflect.DeepEqual(pa.Val, pb.Val) {
			return false
		}
	}
	return true
}

// --- clocks, by PROTOCOL.md's table ---
//
// Written out here rather than taken from package protocol, so that the
// numbers the product shows are checked against the contract, not against
// its own implementation.

// tick is an event of side own (a local write, a send, or both at once).
func tick(c protocol.Clock, own int) protocol.Clock {
	c[own]++
	return c
}

// receive is the receive of a message with clock m that is not a duplicate.
func receive(c, m protocol.Clock, own int) protocol.Clock {
	return tick(protocol.Clock{max(c[0], m[0]), max(c[1], m[1])}, own)
}

const (
	ctlSide = protocol.ControllerIdx
	devSide = protocol.DeviceIdx
)

// setpoint returns a setpoint and its stamp from props.
func setpoint(p protocol.Props) (float64, protocol.Clock) {
	v, _ := p.Setpoint()
	return v, p[protocol.PropSetpoint].W
}
