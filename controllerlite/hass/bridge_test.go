package hass

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// commands records the Commands the fleet publishes: the fleet's broker
// link, for a fleet whose devices the test plays by handing it messages.
type commands struct {
	mu   sync.Mutex
	msgs []protocol.Message
}

func (c *commands) Publish(_ context.Context, topic string, payload []byte, _ byte, _ bool) error {
	m, _, err := protocol.DecodeMessage(payload)
	if err != nil {
		return fmt.Errorf("%s: %w", topic, err)
	}
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	return nil
}

func (c *commands) last() (protocol.Message, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.msgs) == 0 {
		return protocol.Message{}, false
	}
	return c.msgs[len(c.msgs)-1], true
}

// gone hides devices, as a fleet does once a device is deleted.
type gone struct {
	*fleet.Fleet
	mu  sync.Mutex
	ids map[string]bool
}

func (g *gone) hide(id string) { g.mu.Lock(); g.ids[id] = true; g.mu.Unlock() }

func (g *gone) Device(id string) (fleet.Device, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ids[id] {
		return fleet.Device{}, false
	}
	return g.Fleet.Device(id)
}

func (g *gone) Devices() []fleet.Device {
	var out []fleet.Device
	for _, d := range g.Fleet.Devices() {
		if _, ok := g.Device(d.ID); ok {
			out = append(out, d)
		}
	}
	return out
}

// testFleet is a running fleet, ready, on a store of the test.
type testFleet struct {
	*gone
	cmds *commands
	root string
}

func newTestFleet(t *testing.T) *testFleet {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	f, err := fleet.New(fleet.Options{Store: st, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	cmds := &commands{}
	f.LinkUp(cmds, true)
	select {
	case <-f.Ready():
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("fleet not ready")
	}
	return &testFleet{gone: &gone{Fleet: f, ids: map[string]bool{}}, cmds: cmds, root: protocol.DefaultRoot}
}

// device plays a device: its status and an Event with its properties.
func (tf *testFleet) device(t *testing.T, id string, vc protocol.Clock, props string) {
	t.Helper()
	tf.Receive(protocol.Topic(tf.root, id, protocol.KindStatus), protocol.Status{Online: true}.Encode(), false)
	tf.Receive(protocol.Topic(tf.root, id, protocol.KindEvent), fmt.Appendf(nil, `{"v":1,"vc":[%d,%d],"props":%s,"src":"local"}`, vc[0], vc[1], props), false)
}

func (tf *testFleet) telemetry(id, sensors string) {
	tf.Receive(protocol.Topic(tf.root, id, protocol.KindTelemetry),
		fmt.Appendf(nil, `{"v":1,"ts":"2026-12-04T20:00:00Z","temp_c":19.5,"heat":false,"cool":false,"sensor_ok":true,"action":"idle","sensors":%s}`, sensors), false)
}

// haUsers are the logins of the test's Home Assistant broker.
var haUsers = map[string]string{"bridge": "bridge-pw", "homeassistant": "ha-pw"}

func haClient(t *testing.T, m *testenv.Mosquitto, caFile string) *testenv.Client {
	t.Helper()
	c := testenv.Connect(t, m.URL(), testenv.ClientOptions{CAFile: caFile, ClientID: fmt.Sprintf("ha-%d", time.Now().UnixNano()), Username: "homeassistant", Password: "ha-pw"})
	c.Subscribe(t, "homeassistant/#", 1)
	c.Subscribe(t, "thermofleet/#", 1)
	return c
}

func startBridge(t *testing.T, f Fleet, o Options) {
	t.Helper()
	if o.Username == "" {
		o.Username, o.Password = "bridge", haUsers["bridge"]
	}
	o.Logger = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	b, err := New(f, o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// retained connects a fresh client and returns the retained payload on
// topic, "" when the broker keeps none.
func retained(t *testing.T, m *testenv.Mosquitto, caFile, topic, want string) {
	t.Helper()
	testenv.Eventually(t, testenv.WaitTimeout, fmt.Sprintf("retained %q on %s", want, topic), func() (bool, string) {
		c, err := testenv.Dial(m.URL(), testenv.ClientOptions{CAFile: caFile, ClientID: "peek", Username: "homeassistant", Password: "ha-pw"})
		if err != nil {
			return false, err.Error()
		}
		defer c.Close()
		if err := c.SubscribeErr(topic, 1); err != nil {
			return false, err.Error()
		}
		// The retained message, if any, comes with the SUBACK's flow; a
		// marker published after it arrives after it.
		marker := "peek/" + topic
		if err := c.SubscribeErr(marker, 1); err != nil {
			return false, err.Error()
		}
		if err := c.PublishErr(marker, 1, false, []byte("x")); err != nil {
			return false, err.Error()
		}
		if _, _, err := c.WaitErr(func(m testenv.Message) bool { return m.Topic == marker }, testenv.WaitTimeout); err != nil {
			return false, err.Error()
		}
		got := c.Last(topic)
		return got == want || want == "*" && got != "", fmt.Sprintf("%q", got)
	})
}

// TestBridgeFollowsFleet: over TLS with a private CA, documents and states
// follow the fleet, a sensor that leaves the telemetry leaves Home
// Assistant, a command becomes a controller write, a device that leaves
// the fleet loses its entities, and after the broker lost everything
// (restarted without persistence) the bridge publishes it all again.
func TestBridgeFollowsFleet(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Users: haUsers})
	if !strings.HasPrefix(m.URL(), "mqtts://") {
		t.Fatalf("broker %s is not TLS", m.URL())
	}
	tf := newTestFleet(t)
	tf.device(t, "d1", protocol.Clock{0, 2}, `{"mode":{"val":"heat","w":[0,1]},"setpoint_c":{"val":20.5,"w":[0,1]}}`)
	tf.device(t, "d2", protocol.Clock{0, 2}, `{"mode":{"val":"off","w":[0,1]}}`)
	tf.telemetry("d1", `{"floor":{"temp_c":22.25,"ok":true}}`)
	ha := haClient(t, m, pki.CAFile)
	startBridge(t, tf, Options{Broker: m.URL(), CAFile: pki.CAFile})

	tp := Topics{Prefix: DefaultPrefix, Root: DefaultTopicRoot}
	ha.WaitPayload(t, tp.BridgeStatus(), Online)
	ha.WaitPayload(t, tp.State("d1", attrTarget), "20.5")
	ha.WaitPayload(t, tp.State("d1", attrMode), "heat")
	ha.WaitPayload(t, tp.State("d1", attrAction), "idle")
	ha.WaitPayload(t, tp.sensorState("d1", "floor"), "22.25")
	ha.WaitPayload(t, tp.State("d2", attrMode), "off")
	ha.WaitMatch(t, "d1's sensor document", func(m testenv.Message) bool {
		return m.Topic == tp.SensorConfig("d1", "floor") && len(m.Payload) > 0
	})

	// The device changes: the state follows.
	tf.Receive(protocol.Topic(tf.root, "d1", protocol.KindEvent), []byte(`{"v":1,"vc":[0,4],"props":{"mode":{"val":"cool","w":[0,3]},"setpoint_c":{"val":24,"w":[0,3]}},"src":"button"}`), false)
	ha.WaitPayload(t, tp.State("d1", attrMode), "cool")
	ha.WaitPayload(t, tp.State("d1", attrTarget), "24")

	// Home Assistant sets the temperature: a controller write, stamped.
	ha.Publish(t, tp.Command("d1", attrTarget), 1, false, []byte("19.5"))
	testenv.Eventually(t, testenv.WaitTimeout, "a Command with setpoint 19.5", func() (bool, string) {
		c, ok := tf.cmds.last()
		sp, _ := c.Props.Setpoint()
		return ok && sp == 19.5 && c.Src == protocol.SrcController, fmt.Sprintf("%+v", c)
	})
	ha.WaitPayload(t, tp.State("d1", attrTarget), "19.5")

	// The sensor is gone from the device's configuration.
	tf.telemetry("d1", `{}`)
	ha.WaitPayload(t, tp.SensorConfig("d1", "floor"), "")
	retained(t, m, pki.CAFile, tp.SensorConfig("d1", "floor"), "")
	retained(t, m, pki.CAFile, tp.sensorState("d1", "floor"), "")
	retained(t, m, pki.CAFile, tp.ClimateConfig("d1"), "*")

	// d2 is deleted from the fleet: its next notification finds it gone.
	tf.hide("d2")
	tf.telemetry("d2", `{}`)
	ha.WaitPayload(t, tp.ClimateConfig("d2"), "")
	retained(t, m, pki.CAFile, tp.ClimateConfig("d2"), "")
	retained(t, m, pki.CAFile, tp.State("d2", attrMode), "")

	// The broker restarts having lost every retained message: the bridge
	// reconnects and publishes everything again.
	m.Kill()
	m.Start()
	retained(t, m, pki.CAFile, tp.ClimateConfig("d1"), "*")
	retained(t, m, pki.CAFile, tp.State("d1", attrTarget), "19.5")
	retained(t, m, pki.CAFile, tp.BridgeStatus(), Online)
	retained(t, m, pki.CAFile, tp.ClimateConfig("d2"), "")
}

// TestBridgeClearsStaleDocuments: a document the broker kept for a device
// no longer in the fleet (deleted while the controller was down) is
// cleared when the bridge connects; those of devices in the fleet stay.
func TestBridgeClearsStaleDocuments(t *testing.T) {
	m := testenv.StartMosquitto(t, nil, &testenv.MosquittoOptions{Users: haUsers})
	tp := Topics{Prefix: DefaultPrefix, Root: DefaultTopicRoot}
	ha := haClient(t, m, "")
	ghost, _ := json.Marshal(map[string]any{"mode_state_topic": tp.State("ghost", attrMode)})
	ha.Publish(t, tp.ClimateConfig("ghost"), 1, true, ghost)
	ha.Publish(t, tp.SensorConfig("ghost", "floor"), 1, true, []byte(`{}`))
	// The ghost's retained state goes with its document.
	ha.Publish(t, tp.State("ghost", attrMode), 1, true, []byte("heat"))
	// A sensor d1 no longer reports: its document goes, d1's own state
	// (named in the document's availability) stays.
	gone, _ := json.Marshal(map[string]any{"state_topic": tp.State("d1", "sensor/gone/temperature"),
		"availability": []any{map[string]any{"topic": tp.BridgeStatus()}, map[string]any{"topic": tp.State("d1", attrAvailability)}}})
	ha.Publish(t, tp.SensorConfig("d1", "gone"), 1, true, gone)
	ha.Publish(t, tp.State("d1", "sensor/gone/temperature"), 1, true, []byte("21.5"))
	// Another bridge's (another root) is not ours to clear.
	other := Topics{Prefix: DefaultPrefix, Root: "elsewhere"}
	ha.Publish(t, other.ClimateConfig("ghost"), 1, true, ghost)

	tf := newTestFleet(t)
	tf.device(t, "d1", protocol.Clock{0, 2}, `{"mode":{"val":"heat","w":[0,1]}}`)
	startBridge(t, tf, Options{Broker: m.URL()})
	ha.WaitPayload(t, tp.ClimateConfig("ghost"), "")
	ha.WaitPayload(t, tp.SensorConfig("ghost", "floor"), "")
	ha.WaitPayload(t, tp.SensorConfig("d1", "gone"), "")
	retained(t, m, "", tp.ClimateConfig("ghost"), "")
	retained(t, m, "", tp.State("ghost", attrMode), "")
	retained(t, m, "", tp.State("d1", "sensor/gone/temperature"), "")
	retained(t, m, "", tp.ClimateConfig("d1"), "*")
	retained(t, m, "", tp.State("d1", attrAvailability), "*")
	retained(t, m, "", tp.BridgeStatus(), Online)
	retained(t, m, "", other.ClimateConfig("ghost"), string(ghost))
}

// TestBridgeRefusedLogin: a wrong password is logged and retried, and
// nothing is published.
func TestBridgeRefusedLogin(t *testing.T) {
	m := testenv.StartMosquitto(t, nil, &testenv.MosquittoOptions{Users: haUsers})
	tf := newTestFleet(t)
	tf.device(t, "d1", protocol.Clock{0, 2}, `{"mode":{"val":"heat","w":[0,1]}}`)
	logs := &lockedLog{}
	b, err := New(tf, Options{Broker: m.URL(), Username: "bridge", Password: "wrong", Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testenv.Eventually(t, testenv.WaitTimeout, "the refusal logged", func() (bool, string) {
		s := logs.String()
		return strings.Contains(s, "connect failed") && strings.Contains(s, "not Authorized"), s
	})
	retained(t, m, "", Topics{Prefix: DefaultPrefix, Root: DefaultTopicRoot}.ClimateConfig("d1"), "")
}

type lockedLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
