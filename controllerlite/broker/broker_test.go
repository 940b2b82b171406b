package broker

import (
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

func TestNewRejectsBadOptions(t *testing.T) {
	pki := testenv.NewPKI(t)
	good := Options{CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey}
	tests := []struct {
		name   string
		change func(*Options)
		want   string
	}{
		{"no CA", func(o *Options) { o.CAFile = "" }, "all required"},
		{"missing key file", func(o *Options) { o.KeyFile = pki.Dir + "/nope.key" }, "nope.key"},
		{"wildcard root", func(o *Options) { o.TopicRoot = "thermo/#" }, "not allowed"},
		{"empty level root", func(o *Options) { o.TopicRoot = "a//b" }, "empty topic level"},
		{"system root", func(o *Options) { o.TopicRoot = "$SYS" }, "'$'"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := good
			tc.change(&o)
			_, err := New(o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: error %v, want one containing %q", err, tc.want)
			}
		})
	}
	b, err := New(good)
	if err != nil {
		t.Fatalf("New with good options: %v", err)
	}
	if b.opts.Listen != DefaultListen || b.opts.TopicRoot != protocol.DefaultRoot {
		t.Errorf("defaults: listen %q root %q", b.opts.Listen, b.opts.TopicRoot)
	}
	if b.Addr() != nil {
		t.Errorf("Addr before Start = %v, want nil", b.Addr())
	}
	if err := b.Publish("thermo/d1/cmd", []byte("x"), false, 1); err == nil {
		t.Error("Publish before Start succeeded")
	}
	if err := b.Close(); err != nil {
		t.Errorf("Close of an unstarted broker: %v", err)
	}
	if err := b.Start(); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// TestConnectIdentity: the certificate CN is the identity and must be the
// client id; anything else is refused with a logged reason.
func TestConnectIdentity(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)

	d1Cert, d1Key := pki.Client(t, "d1")
	ctrlCert, ctrlKey := pki.Client(t, "controller")
	foreignCert, foreignKey := pki.ForeignClient(t, "d1")
	expiredCert, expiredKey := pki.ExpiredClient(t, "d1")
	badCert, badKey := pki.ClientWithCN(t, "Bad.ID")
	inlineCert, inlineKey := pki.ClientWithCN(t, "inline")
	ctrlBCert, ctrlBKey := pki.ClientWithCN(t, "controller-b")
	prefixCert, prefixKey := pki.ClientWithCN(t, "controller-")

	tests := []struct {
		name    string
		opts    testenv.ClientOptions
		refused bool
		logged  []string // a log line with all of these explains the refusal
	}{
		{"device", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key}, false, nil},
		{"controller", testenv.ClientOptions{CertFile: ctrlCert, KeyFile: ctrlKey}, false, nil},
		{"device with will on its status", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key,
			Will: &testenv.Message{Topic: "thermo/d1/status", Payload: []byte(`{"v":1,"online":false}`), QoS: 1, Retained: true}}, false, nil},
		{"no certificate", testenv.ClientOptions{ClientID: "d1"}, true, []string{"TLS handshake failed"}},
		{"foreign CA", testenv.ClientOptions{CertFile: foreignCert, KeyFile: foreignKey}, true, []string{"TLS handshake failed"}},
		{"expired certificate", testenv.ClientOptions{CertFile: expiredCert, KeyFile: expiredKey}, true, []string{"TLS handshake failed"}},
		{"client id is not the CN", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key, ClientID: "d2"}, true,
			[]string{"connection refused", `client id "d2" does not match certificate CN "d1"`}},
		{"CN is no device id", testenv.ClientOptions{CertFile: badCert, KeyFile: badKey, ClientID: "Bad.ID"}, true,
			[]string{"connection refused", "not a valid device id"}},
		{"CN is the reserved inline id", testenv.ClientOptions{CertFile: inlineCert, KeyFile: inlineKey, ClientID: "inline"}, true,
			[]string{"connection refused", "reserved"}},
		{"controller process", testenv.ClientOptions{CertFile: ctrlBCert, KeyFile: ctrlBKey}, false, nil},
		{"CN is a bare controller prefix", testenv.ClientOptions{CertFile: prefixCert, KeyFile: prefixKey, ClientID: "controller-"}, true,
			[]string{"connection refused", "not a valid device id"}},
		{"retained will on its telemetry", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key,
			Will: &testenv.Message{Topic: "thermo/d1/telemetry", Payload: []byte(`{}`), QoS: 0, Retained: true}}, true,
			[]string{"connection refused", "will topic", "retained true"}},
		{"will on its own junk topic", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key,
			Will: &testenv.Message{Topic: "thermo/d1/junk", Payload: []byte(`{}`), QoS: 1}}, true,
			[]string{"connection refused", "will topic"}},
		{"will on another device's topic", testenv.ClientOptions{CertFile: d1Cert, KeyFile: d1Key,
			Will: &testenv.Message{Topic: "thermo/d2/status", Payload: []byte(`{"v":1,"online":false}`), QoS: 1, Retained: true}}, true,
			[]string{"connection refused", "will topic"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.CAFile = pki.CAFile
			c, err := testenv.Dial(tb.url, tc.opts)
			if c != nil {
				defer c.Close()
			}
			if tc.refused != (err != nil) {
				t.Fatalf("Dial: err = %v, want refused = %v", err, tc.refused)
			}
			if tc.logged != nil {
				tb.log.waitFor(t, tc.logged...)
			}
		})
	}
}

// TestImpostorDoesNotTakeOver: a refused client id must not disconnect the
// real client that owns it.
func TestImpostorDoesNotTakeOver(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	var mu sync.Mutex
	var events []string
	tb.OnClient(func(id string, connected bool) {
		mu.Lock()
		defer mu.Unlock()
		events = append(events, id+map[bool]string{true: " up", false: " down"}[connected])
	})

	d2 := pki.Connect(t, tb.url, "d2")
	d1Cert, d1Key := pki.Client(t, "d1")
	if c, err := testenv.Dial(tb.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: d1Cert, KeyFile: d1Key, ClientID: "d2"}); err == nil {
		c.Close()
		t.Fatal("d1's certificate connected as d2")
	}
	tb.log.waitFor(t, "connection refused", `"d2"`)
	// d2 still works: a round trip through the broker.
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	if err := tb.Publish("thermo/d2/cmd", []byte("still here"), false, 1); err != nil {
		t.Fatal(err)
	}
	d2.WaitPayload(t, "thermo/d2/cmd", "still here")
	if !d2.Paho.IsConnectionOpen() {
		t.Fatal("d2 lost its connection")
	}
	mu.Lock()
	defer mu.Unlock()
	if strings.Join(events, ",") != "d2 up" {
		t.Fatalf("OnClient events %q, want just d2 up", events)
	}
}

// TestReservedIDs: the broker's own reserved ids get no rights, whatever
// the protocol's rule says of them.
func TestReservedIDs(t *testing.T) {
	h := newAuthHook("thermo", nil, nil)
	if h.mayPublish("inline", "thermo/inline/event", true) || h.maySubscribe("inline", "thermo/inline/cmd") {
		t.Error("the reserved id inline has rights")
	}
	if !h.mayPublish("d1", "thermo/d1/event", true) || !h.maySubscribe("d1", "thermo/d1/cmd") {
		t.Error("device d1 has no rights")
	}
}

func TestSubscribeACL(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	d1 := pki.Connect(t, tb.url, "d1")
	ctrl := pki.Connect(t, tb.url, "controller")
	bCert, bKey := pki.ClientWithCN(t, "controller-b")
	ctrlB := testenv.Connect(t, tb.url, testenv.ClientOptions{CAFile: pki.CAFile, CertFile: bCert, KeyFile: bKey})

	tests := []struct {
		client  *testenv.Client
		who     string
		filter  string
		allowed bool
	}{
		{d1, "d1", "thermo/d1/cmd", true},
		{d1, "d1", "thermo/d1/event", true}, // rejoining: its own retained event
		{d1, "d1", "thermo/d1/#", false},
		{d1, "d1", "thermo/d1/+", false},
		{d1, "d1", "thermo/d1", false},
		{d1, "d1", "thermo/d1/status", false},
		{d1, "d1", "thermo/d1/telemetry", false},
		{d1, "d1", "thermo/d1/junk/#", false},
		{d1, "d1", "thermo/d2/cmd", false},
		{d1, "d1", "thermo/d10/cmd", false},
		{d1, "d1", "thermo/+/cmd", false},
		{d1, "d1", "thermo/#", false},
		{d1, "d1", "thermo/+/#", false},
		{d1, "d1", "#", false},
		{d1, "d1", "+/d1/cmd", false},
		{d1, "d1", "$SYS/#", false},
		{ctrl, "controller", "thermo/#", true},
		{ctrl, "controller", "thermo/+/event", true},
		{ctrl, "controller", "thermo/d1/cmd", true},
		{ctrl, "controller", "#", false},
		{ctrl, "controller", "+/d1/cmd", false},
		{ctrl, "controller", "other/#", false},
		{ctrl, "controller", "thermostat/#", false},
		{ctrlB, "controller-b", "thermo/#", true},
		{ctrlB, "controller-b", "#", false},
	}
	for _, tc := range tests {
		t.Run(tc.who+" "+tc.filter, func(t *testing.T) {
			err := tc.client.SubscribeErr(tc.filter, 1)
			if tc.allowed != (err == nil) {
				t.Fatalf("subscribe: err = %v, want allowed = %v", err, tc.allowed)
			}
		})
	}
}

// TestForbiddenPublishIsAckedAndDropped: a device publishing on another
// device's topics gets its acknowledgement (so paho does not resend it on
// every reconnect), stays connected, and nobody receives the message.
func TestForbiddenPublishIsAckedAndDropped(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	var mu sync.Mutex
	var downs []string
	tb.OnClient(func(id string, connected bool) {
		if !connected {
			mu.Lock()
			downs = append(downs, id)
			mu.Unlock()
		}
	})
	d1 := pki.Connect(t, tb.url, "d1")
	d2 := pki.Connect(t, tb.url, "d2")
	ctrl := pki.Connect(t, tb.url, "controller")
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	d2.Subscribe(t, "thermo/d2/event", 1)
	ctrl.Subscribe(t, "thermo/#", 1)
	inline := subscribe(t, tb.Broker, "thermo/#")
	d1.Subscribe(t, "thermo/d1/cmd", 1)

	tests := []struct {
		topic  string
		qos    byte
		retain bool
	}{
		{"thermo/d2/cmd", 0, false},
		{"thermo/d2/cmd", 1, false},
		{"thermo/d2/cmd", 2, false},
		{"thermo/d2/status", 1, true},
		{"thermo/status", 1, true},
		{"other/d1/event", 1, true},
		// Its own id, but not the contract's topics or not retained.
		{"thermo/d1/cmd", 1, true},
		{"thermo/d1/cmd", 1, false},
		{"thermo/d1/telemetry", 1, true},
		{"thermo/d1/junk", 1, true},
		{"thermo/d1/junk/1", 1, true},
		{"thermo/d1/junk/2", 0, false},
		{"thermo/d1/event/x", 1, true},
		{"thermo/d1", 1, true},
	}
	for i, tc := range tests {
		d1.Publish(t, tc.topic, tc.qos, tc.retain, []byte("forbidden"))
		tb.log.waitFor(t, "publish dropped", "client=d1", fmt.Sprintf("topic=%s qos=%d retain=%v", tc.topic, tc.qos, tc.retain))
		// d1's messages are handled in order: once its next, allowed,
		// message is delivered, the forbidden one would have been too.
		marker := "marker " + string('a'+rune(i))
		d1.Publish(t, "thermo/d1/event", 1, false, []byte(marker))
		ctrl.WaitPayload(t, "thermo/d1/event", marker)
		inline.waitFor(t, "thermo/d1/event", marker)
	}
	for _, m := range ctrl.Messages() {
		if string(m.Payload) == "forbidden" {
			t.Errorf("controller received the forbidden publish on %s", m.Topic)
		}
	}
	for _, m := range inline.all() {
		if m.payload == "forbidden" {
			t.Errorf("in-process subscriber received the forbidden publish on %s", m.topic)
		}
	}
	if msgs := d2.Messages(); len(msgs) != 0 {
		t.Errorf("d2 received %+v", msgs)
	}
	if msgs := d1.Messages(); len(msgs) != 0 {
		t.Errorf("d1 received %+v", msgs)
	}
	// Nothing forbidden was retained.
	late := subscribe(t, tb.Broker, "thermo/#")
	for _, m := range late.all() {
		t.Errorf("retained after forbidden publishes: %+v", m)
	}
	if !d1.Paho.IsConnectionOpen() {
		t.Error("d1 was disconnected")
	}
	mu.Lock()
	defer mu.Unlock()
	if len(downs) != 0 {
		t.Errorf("clients disconnected: %v", downs)
	}
}

// TestDeliveryACL: the controller reaches every device, a device only
// itself, and a device's retained messages reach only those allowed.
func TestDeliveryACL(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBroker(t, pki, "", nil)
	ctrl := pki.Connect(t, tb.url, "controller")
	d1 := pki.Connect(t, tb.url, "d1")
	d2 := pki.Connect(t, tb.url, "d2")
	d1.Subscribe(t, "thermo/d1/cmd", 1)
	d2.Subscribe(t, "thermo/d2/cmd", 1)
	ctrl.Subscribe(t, "thermo/+/event", 1)

	ctrl.Publish(t, "thermo/d1/cmd", 1, true, []byte("for d1"))
	ctrl.Publish(t, "thermo/d2/cmd", 1, true, []byte("for d2"))
	d1.WaitPayload(t, "thermo/d1/cmd", "for d1")
	d2.WaitPayload(t, "thermo/d2/cmd", "for d2")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("from d1"))
	ctrl.WaitPayload(t, "thermo/d1/event", "from d1")
	d2.Publish(t, "thermo/d2/event", 1, false, []byte("from d2"))
	ctrl.WaitPayload(t, "thermo/d2/event", "from d2")
	for _, m := range d1.Messages() {
		if strings.HasPrefix(m.Topic, "thermo/d2/") {
			t.Errorf("d1 received %s", m.Topic)
		}
	}
	for _, m := range d2.Messages() {
		if strings.HasPrefix(m.Topic, "thermo/d1/") {
			t.Errorf("d2 received %s", m.Topic)
		}
	}
	// A new session of d1 gets its retained command, flagged retained,
	// and nothing of d2's.
	d1b := pki.Connect(t, tb.url, "d1")
	d1b.Subscribe(t, "thermo/d1/cmd", 1)
	d1b.Subscribe(t, "thermo/d1/event", 1)
	m, _ := d1b.WaitPayload(t, "thermo/d1/cmd", "for d1")
	if !m.Retained {
		t.Error("retained command delivered without the retain flag")
	}
	ev, _ := d1b.WaitPayload(t, "thermo/d1/event", "from d1")
	if !ev.Retained {
		t.Error("retained event delivered without the retain flag")
	}
	if n := len(d1b.Messages()); n != 2 {
		t.Errorf("new d1 session got %d messages, want 2: %+v", n, d1b.Messages())
	}
}
