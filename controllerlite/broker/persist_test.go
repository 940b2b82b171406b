package broker

import (
	"bufio"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thermofleet/thermo/internal/testenv"
)

// helperEnv makes the test binary run a broker instead of the tests (see
// TestMain), so a test can kill -9 it.
const helperEnv = "THERMO_BROKER_TEST_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		os.Exit(runHelper(dir))
	}
	os.Exit(m.Run())
}

// runHelper runs a broker with the PKI files and data dir of dir, prints its
// address, and waits to be killed.
func runHelper(dir string) int {
	b, err := New(Options{
		Listen:   "127.0.0.1:0",
		CAFile:   os.Getenv(helperEnv + "_CA"),
		CertFile: os.Getenv(helperEnv + "_CERT"),
		KeyFile:  os.Getenv(helperEnv + "_KEY"),
		DataDir:  dir,
		Logger:   slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err == nil {
		err = b.Start()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		return 1
	}
	fmt.Printf("ADDR %s\n", b.Addr())
	select {}
}

// startHelper runs the broker in a child process on dataDir and returns
// its URL, the process and its log.
func startHelper(t *testing.T, pki *testenv.PKI, dataDir string) (string, *exec.Cmd, *logRecorder) {
	t.Helper()
	testenv.SkipIfCannotReexec(t)
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"="+dataDir,
		helperEnv+"_CA="+pki.CAFile,
		helperEnv+"_CERT="+pki.ServerCert,
		helperEnv+"_KEY="+pki.ServerKey,
	)
	log := newLogRecorder()
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	errOut, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		sc := bufio.NewScanner(errOut)
		for sc.Scan() {
			log.add(sc.Text())
		}
	}()
	addr := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if a, ok := strings.CutPrefix(sc.Text(), "ADDR "); ok {
				addr <- a
			}
		}
		close(addr)
	}()
	select {
	case a, ok := <-addr:
		if !ok {
			<-logDone
			cmd.Wait()
			t.Fatalf("helper broker exited:\n%s", strings.Join(log.all(), "\n"))
		}
		return "mqtts://" + a, cmd, log
	case <-time.After(waitTimeout):
		t.Fatalf("helper broker did not start:\n%s", strings.Join(log.all(), "\n"))
	}
	return "", nil, nil
}

// TestRestartKeepsRetainedAndSessions: after Close, a broker on the same
// data dir has the retained messages, the persistent session (its
// subscription, and a message queued while the device was away), and no
// trace of a clean session.
func TestRestartKeepsRetainedAndSessions(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	d1Cert, d1Key := pki.Client(t, "d1")
	persistent := testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d1Cert, KeyFile: d1Key, Persistent: true}

	first := startBroker(t, pki, dir, nil)
	d1 := testenv.Connect(t, first.url, persistent)
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e1"))
	d2 := pki.Connect(t, first.url, "d2") // clean session
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	d1.Close()
	d2.Close()
	first.log.waitFor(t, "client disconnected", "client=d1")
	first.log.waitFor(t, "client disconnected", "client=d2")
	if err := first.Publish("thermo/d1/cmd", []byte("c1"), true, 1); err != nil {
		t.Fatal(err)
	}
	if err := first.Publish("thermo/d1/cmd", []byte("queued"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}

	second := startBroker(t, pki, dir, nil)
	in := subscribe(t, second.Broker, "thermo/#")
	retained := map[string]string{}
	for _, m := range in.all() {
		if !m.retained {
			t.Errorf("not flagged retained: %+v", m)
		}
		retained[m.topic] = m.payload
	}
	if retained["thermo/d1/event"] != "e1" || retained["thermo/d1/cmd"] != "c1" || len(retained) != 2 {
		t.Errorf("retained after restart: %v", retained)
	}

	// d1 resumes its session without subscribing: both messages queued
	// while it was away (c1 and "queued") and new ones arrive. mochi v2.7.9
	// resends a session's queue sorted by the second each message was
	// created, so two queued within one second come in either order; no
	// client of ours relies on that order (every Command carries the whole
	// state), so only the set is checked.
	d1 = testenv.Connect(t, second.url, persistent)
	for _, want := range []string{"c1", "queued"} {
		d1.WaitPayload(t, "thermo/d1/cmd", want)
	}
	if n := len(d1.Messages()); n != 2 {
		t.Errorf("d1 got %d messages on resuming, want the 2 queued: %+v", n, d1.Messages())
	}
	if err := second.Publish("thermo/d1/cmd", []byte("after restart"), false, 1); err != nil {
		t.Fatal(err)
	}
	d1.WaitPayload(t, "thermo/d1/cmd", "after restart")

	// d2's clean session is gone: it gets nothing without subscribing.
	d2 = pki.Connect(t, second.url, "d2")
	d2.Subscribe(t, "thermo/d2/event", 1)
	if err := second.Publish("thermo/d2/cmd", []byte("not subscribed"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := second.Publish("thermo/d2/event", []byte("subscribed"), false, 1); err != nil {
		t.Fatal(err)
	}
	_, before := d2.WaitPayload(t, "thermo/d2/event", "subscribed")
	if len(before) != 0 {
		t.Errorf("clean session d2 received %+v", before)
	}
}

// TestKill9 kills a broker process with SIGKILL and restarts on its data
// dir: retained messages and the persistent session survive, the wills of
// the clients it had connected are published, and a clean session's
// subscriptions do not come back to life.
func TestKill9(t *testing.T) {
	const offline = `{"v":1,"online":false}`
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	d1Cert, d1Key := pki.Client(t, "d1")
	persistent := testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d1Cert, KeyFile: d1Key, Persistent: true,
		Will: &testenv.Message{Topic: "thermo/d1/status", Payload: []byte(offline), QoS: 1, Retained: true}}

	url, cmd, helperLog := startHelper(t, pki, dir)
	d1 := testenv.Connect(t, url, persistent)
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d1.Publish(t, "thermo/d1/status", 1, true, []byte(`{"v":1,"online":true}`))
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e1"))
	d2 := pki.Connect(t, url, "d2")
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	// d3 had a persistent session and disconnected cleanly: its will must
	// not be taken for a crash's.
	d3Cert, d3Key := pki.Client(t, "d3")
	d3 := testenv.Connect(t, url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d3Cert, KeyFile: d3Key, Persistent: true,
		Will: &testenv.Message{Topic: "thermo/d3/status", Payload: []byte(offline), QoS: 1, Retained: true}})
	d3.Publish(t, "thermo/d3/status", 1, true, []byte(`{"v":1,"online":true}`))
	d3.Paho.Disconnect(250)
	helperLog.waitFor(t, "stored session ended", "client=d3")

	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	d1.Close()
	d2.Close()

	tb := startBroker(t, pki, dir, nil)
	tb.log.waitFor(t, "published will", "client=d1")
	in := subscribe(t, tb.Broker, "thermo/#")
	retained := map[string]string{}
	for _, m := range in.all() {
		retained[m.topic] = m.payload
	}
	want := map[string]string{
		"thermo/d1/status": offline, // d1's will, published at restart
		"thermo/d1/event":  "e1",
		"thermo/d3/status": `{"v":1,"online":true}`, // no will: d3 had left cleanly
	}
	for topic, payload := range want {
		if retained[topic] != payload {
			t.Errorf("retained %s = %q, want %q", topic, retained[topic], payload)
		}
	}
	if tb.log.has("published will", "client=d3") {
		t.Error("published the will of a client that had disconnected cleanly")
	}

	// d1's session survived: it receives without subscribing again.
	d1 = testenv.Connect(t, tb.url, persistent)
	if err := tb.Publish("thermo/d1/cmd", []byte("after kill"), false, 1); err != nil {
		t.Fatal(err)
	}
	d1.WaitPayload(t, "thermo/d1/cmd", "after kill")

	// d2's clean session did not come back: its old subscription is gone.
	d2 = pki.Connect(t, tb.url, "d2")
	d2.Subscribe(t, "thermo/d2/event", 1)
	if err := tb.Publish("thermo/d2/cmd", []byte("stale subscription"), false, 1); err != nil {
		t.Fatal(err)
	}
	if err := tb.Publish("thermo/d2/event", []byte("subscribed"), false, 1); err != nil {
		t.Fatal(err)
	}
	if _, before := d2.WaitPayload(t, "thermo/d2/event", "subscribed"); len(before) != 0 {
		t.Errorf("clean session d2 received %+v after the restart", before)
	}
}

// TestStoreLocked: a second broker on the same data dir fails with a clear
// error instead of sharing the store.
func TestStoreLocked(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	startBroker(t, pki, dir, nil)
	b, err := New(Options{Listen: "127.0.0.1:0", CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		DataDir: dir, Logger: slog.New(newLogRecorder())})
	if err != nil {
		t.Fatal(err)
	}
	err = b.Start()
	if err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Start on the same data dir: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close after a failed Start: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, storeFile)); err != nil {
		t.Errorf("store file: %v", err)
	}
}

// expiryWatch is a hook that reports what mochi's housekeeping deletes.
type expiryWatch struct {
	mqtt.HookBase
	retained chan string
	qos      chan uint16
}

func (h *expiryWatch) ID() string { return "expiry-watch" }
func (h *expiryWatch) Provides(b byte) bool {
	return b == mqtt.OnRetainedExpired || b == mqtt.OnQosDropped
}
func (h *expiryWatch) OnRetainedExpired(topic string) { h.retained <- topic }
func (h *expiryWatch) OnQosDropped(_ *mqtt.Client, pk packets.Packet) {
	h.qos <- pk.PacketID
}

// TestNoExpiryByAge: retained messages and messages queued for a session
// are not deleted for their age (mochi's default deletes them after 24 h).
// Messages made 48 h ago are injected; a control message that MQTT 5
// expiry does delete shows the housekeeping pass ran over them.
func TestNoExpiryByAge(t *testing.T) {
	if got := capabilities(t); got.MaximumMessageExpiryInterval != 0 ||
		got.MaximumSessionExpiryInterval != math.MaxUint32 {
		t.Fatalf("capabilities: message expiry %d, session expiry %d", got.MaximumMessageExpiryInterval, got.MaximumSessionExpiryInterval)
	}

	pki := testenv.NewPKI(t)
	watch := &expiryWatch{retained: make(chan string, 8), qos: make(chan uint16, 8)}
	tb := startBroker(t, pki, t.TempDir(), func(b *Broker) {
		if err := b.srv.AddHook(watch, nil); err != nil {
			t.Fatal(err)
		}
	})
	old := time.Now().Add(-48 * time.Hour).Unix()
	now := time.Now().Unix()

	// A persistent session with a command queued while it is away.
	d1Cert, d1Key := pki.Client(t, "d1")
	persistent := testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d1Cert, KeyFile: d1Key, Persistent: true}
	d1 := testenv.Connect(t, tb.url, persistent)
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d1.Close()
	tb.log.waitFor(t, "client disconnected", "client=d1")
	if err := tb.Publish("thermo/d1/cmd", []byte("queued 48h ago"), false, 1); err != nil {
		t.Fatal(err)
	}

	cl, ok := tb.srv.Clients.Get("d1")
	if !ok {
		t.Fatal("no stored session for d1")
	}
	queued := cl.State.Inflight.GetAll(false)
	if len(queued) != 1 {
		t.Fatalf("queued for d1: %d messages, want 1", len(queued))
	}
	for _, pk := range queued {
		pk.Created = old
		cl.State.Inflight.Set(pk)
	}
	// Control: an MQTT 5 message with a past expiry, which must go.
	cl.State.Inflight.Set(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "thermo/d1/cmd",
		PacketID: 999, ProtocolVersion: 5, Created: old, Expiry: now - 1, Payload: []byte("control"),
	})

	tb.srv.Topics.RetainMessage(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true, Qos: 1},
		TopicName:   "thermo/d2/event", Payload: []byte("retained 48h ago"), Created: old,
	})
	// The controls are published as an MQTT 5 client would, with a
	// message expiry of 1 s: the first such message also starts mochi's
	// retained-expiry pass, stopped until one can expire (retained.go).
	v5 := tb.srv.NewClient(nil, "local", "inline-v5", true)
	v5.Properties.ProtocolVersion = 5
	control := func(topic string) {
		t.Helper()
		if err := tb.srv.InjectPacket(v5, packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Retain: true},
			TopicName:   topic, Payload: []byte("control"), ProtocolVersion: 5,
			Properties: packets.Properties{MessageExpiryInterval: 1},
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitRetainedExpiry := func(topic string) {
		t.Helper()
		select {
		case got := <-watch.retained:
			if got != topic {
				t.Fatalf("expired retained %q, want only the control %q", got, topic)
			}
		case <-time.After(waitTimeout):
			t.Fatalf("control %s never expired: housekeeping did not run", topic)
		}
	}
	// Two passes: the second control is only seen by a pass that starts
	// after the first one ended, so the first pass went over everything.
	control("thermo/x/control1")
	waitRetainedExpiry("thermo/x/control1")
	control("thermo/x/control2")
	waitRetainedExpiry("thermo/x/control2")

	// mochi reports each dropped queued message twice.
	waitQosExpiry := func(want uint16, earlier ...uint16) {
		t.Helper()
		for {
			select {
			case id := <-watch.qos:
				if id == want {
					return
				}
				if !slices.Contains(earlier, id) {
					t.Fatalf("dropped queued packet %d, want only the control %d", id, want)
				}
			case <-time.After(waitTimeout):
				t.Fatalf("queued control %d never expired: housekeeping did not run", want)
			}
		}
	}
	waitQosExpiry(999)
	// The sweep handles a client in one call and reported the control
	// from inside it: a second control, seen only by a later sweep, shows
	// the first one finished.
	cl.State.Inflight.Set(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1}, TopicName: "thermo/d1/cmd",
		PacketID: 998, ProtocolVersion: 5, Created: old, Expiry: now - 1, Payload: []byte("control"),
	})
	waitQosExpiry(998, 999)

	late := subscribe(t, tb.Broker, "thermo/d2/event")
	if got := late.all(); len(got) != 1 || got[0].payload != "retained 48h ago" {
		t.Errorf("48 h old retained message: %+v", got)
	}
	d1 = testenv.Connect(t, tb.url, persistent)
	d1.WaitPayload(t, "thermo/d1/cmd", "queued 48h ago")
}

// capabilities builds a broker and returns mochi's capabilities.
func capabilities(t *testing.T) *mqtt.Capabilities {
	t.Helper()
	pki := testenv.NewPKI(t)
	b, err := New(Options{CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey, Logger: slog.New(newLogRecorder())})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	return b.srv.Options.Capabilities
}

// TestFreshStoreLogsNoError: a first start on an empty data directory, a
// client's session and a clean stop log nothing at ERROR (mochi's bolt hook
// logged "failed to get data key=SYS" on every fresh store).
func TestFreshStoreLogsNoError(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	b := startBroker(t, pki, dir, nil)
	d1 := pki.Connect(t, b.url, "d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("e1"))
	d1.Close()
	b.log.waitFor(t, "client disconnected", "client=d1")
	b.Close()
	again := startBroker(t, pki, dir, nil)
	again.Close()
	for _, r := range []*logRecorder{b.log, again.log} {
		for _, l := range r.all() {
			if strings.HasPrefix(l, "ERROR") {
				t.Errorf("logged at ERROR: %s", l)
			}
		}
	}
}
