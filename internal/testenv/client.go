package testenv

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net/url"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/provisioning"
)

// WaitTimeout bounds every wait of the client helpers.
const WaitTimeout = 10 * time.Second

// Message is a message received by a Client.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
}

// ClientOptions describes how Dial connects.
type ClientOptions struct {
	// CAFile is the CA trusted for the broker's certificate. Required but
	// for a plain mqtt:// broker.
	CAFile string
	// Username and Password log in to a password broker
	// (MosquittoOptions.Users).
	Username, Password string
	// CertFile and KeyFile are the client certificate; empty connects
	// without one (a broker must refuse that).
	CertFile, KeyFile string
	// ClientID defaults to the certificate's Common Name (the broker
	// requires them to match), or "anonymous" without a certificate.
	ClientID string
	// ServerName is the name the broker's certificate is verified against;
	// default the URL's host.
	ServerName string
	// Persistent uses a persistent session (CleanSession false).
	Persistent bool
	// Will, if set, is the client's last will.
	Will *Message
	// AutoReconnect lets paho reconnect after a broker restart; subscribe
	// again with Resubscribe or set ResumeSubs semantics yourself.
	AutoReconnect bool
}

// Client is a paho MQTT client that records every message it receives,
// for asserting in tests. Handlers never block paho.
type Client struct {
	// Paho is the underlying client, for anything the helpers lack.
	Paho mqtt.Client

	mu     sync.Mutex
	msgs   []Message
	notify chan struct{}
	subs   map[string]byte
}

// Dial connects to url (mqtts://HOST:PORT) over TLS, verifying the broker's
// certificate against o.CAFile and the host name (or to mqtt://HOST:PORT in
// plain text, a password broker's). It returns the error of a
// refused connection instead of failing the test, for tests of refusals.
func Dial(rawURL string, o ClientOptions) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("dial: %w", err)
	}
	var tlsConf *tls.Config // nil for plain mqtt://
	if u.Scheme != "mqtt" && u.Scheme != "tcp" {
		pool, err := provisioning.LoadCertPool(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		tlsConf = &tls.Config{RootCAs: pool, ServerName: o.ServerName, MinVersion: tls.VersionTLS12}
		if tlsConf.ServerName == "" {
			tlsConf.ServerName = u.Hostname()
		}
	}
	clientID := o.ClientID
	if o.CertFile != "" && tlsConf != nil {
		pair, cn, err := provisioning.LoadKeyPair(o.CertFile, o.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("dial: %w", err)
		}
		tlsConf.Certificates = []tls.Certificate{pair}
		if clientID == "" {
			clientID = cn
		}
	}
	if clientID == "" {
		clientID = "anonymous"
	}
	c := &Client{notify: make(chan struct{}, 1), subs: map[string]byte{}}
	opts := mqtt.NewClientOptions().
		AddBroker(rawURL).
		SetClientID(clientID).
		SetUsername(o.Username).
		SetPassword(o.Password).
		SetCleanSession(!o.Persistent).
		SetAutoReconnect(o.AutoReconnect).
		SetConnectRetry(false).
		SetConnectTimeout(WaitTimeout).
		SetMaxReconnectInterval(time.Second).
		SetOrderMatters(true). // record() never blocks; messages stay in arrival order
		SetDefaultPublishHandler(func(_ mqtt.Client, m mqtt.Message) { c.record(m) }).
		SetOnConnectHandler(func(pc mqtt.Client) { c.resubscribe(pc) })
	if tlsConf != nil {
		opts.SetTLSConfig(tlsConf)
	}
	if o.Will != nil {
		opts.SetBinaryWill(o.Will.Topic, o.Will.Payload, o.Will.QoS, o.Will.Retained)
	}
	c.Paho = mqtt.NewClient(opts)
	tok := c.Paho.Connect()
	if !tok.WaitTimeout(WaitTimeout) {
		c.Paho.Disconnect(0)
		return nil, fmt.Errorf("dial %s: connect timed out", rawURL)
	}
	if err := tok.Error(); err != nil {
		return nil, fmt.Errorf("dial %s as %s: %w", rawURL, clientID, err)
	}
	return c, nil
}

// Connect is Dial that fails the test on error and disconnects when the
// test ends.
func Connect(t testing.TB, rawURL string, o ClientOptions) *Client {
	t.Helper()
	c, err := Dial(rawURL, o)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(c.Close)
	return c
}

// Connect connects to url as client id of this PKI (issuing its
// certificate with Client), trusting the fleet CA.
func (p *PKI) Connect(t testing.TB, rawURL, id string) *Client {
	t.Helper()
	certFile, keyFile := p.Client(t, id)
	return Connect(t, rawURL, ClientOptions{CAFile: p.CAFile, CertFile: certFile, KeyFile: keyFile})
}

// Close disconnects at once.
func (c *Client) Close() { c.Paho.Disconnect(0) }

func (c *Client) record(m mqtt.Message) {
	c.mu.Lock()
	c.msgs = append(c.msgs, Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos(), Retained: m.Retained()})
	c.mu.Unlock()
	select {
	case c.notify <- struct{}{}:
	default:
	}
}

// resubscribe runs on every (re)connect: paho never resubscribes by itself.
func (c *Client) resubscribe(pc mqtt.Client) {
	c.mu.Lock()
	subs := make(map[string]byte, len(c.subs))
	for k, v := range c.subs {
		subs[k] = v
	}
	c.mu.Unlock()
	if len(subs) > 0 {
		pc.SubscribeMultiple(subs, nil) // not waited on: this runs in paho's goroutine
	}
}

// SubscribeErr subscribes to filter and waits for the SUBACK; a refusal
// (return code 0x80) is an error. The subscription is renewed on reconnect.
func (c *Client) SubscribeErr(filter string, qos byte) error {
	tok := c.Paho.Subscribe(filter, qos, nil)
	if !tok.WaitTimeout(WaitTimeout) {
		return fmt.Errorf("subscribe %s: timed out", filter)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("subscribe %s: %w", filter, err)
	}
	if st, ok := tok.(*mqtt.SubscribeToken); ok {
		if code, ok := st.Result()[filter]; ok && code >= 0x80 {
			return fmt.Errorf("subscribe %s: refused by the broker (code %#x)", filter, code)
		}
	}
	c.mu.Lock()
	c.subs[filter] = qos
	c.mu.Unlock()
	return nil
}

// Subscribe is SubscribeErr failing the test on error.
func (c *Client) Subscribe(t testing.TB, filter string, qos byte) {
	t.Helper()
	if err := c.SubscribeErr(filter, qos); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// PublishErr publishes and waits for the broker's acknowledgement (QoS 1,
// 2) or the write (QoS 0). Mosquitto acknowledges a publish its ACL
// forbids and drops it: an ack is not a delivery.
func (c *Client) PublishErr(topic string, qos byte, retained bool, payload []byte) error {
	tok := c.Paho.Publish(topic, qos, retained, payload)
	if !tok.WaitTimeout(WaitTimeout) {
		return fmt.Errorf("publish %s: timed out", topic)
	}
	if err := tok.Error(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	return nil
}

// Publish is PublishErr failing the test on error.
func (c *Client) Publish(t testing.TB, topic string, qos byte, retained bool, payload []byte) {
	t.Helper()
	if err := c.PublishErr(topic, qos, retained, payload); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// Messages returns a copy of every message received so far.
func (c *Client) Messages() []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Message(nil), c.msgs...)
}

// Last is the payload of the latest message received on topic, "" when
// none (or an empty one) was.
func (c *Client) Last(topic string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.msgs) - 1; i >= 0; i-- {
		if c.msgs[i].Topic == topic {
			return string(c.msgs[i].Payload)
		}
	}
	return ""
}

// ErrTimeout is returned by WaitErr when no matching message arrives in time.
var ErrTimeout = errors.New("timed out waiting for a message")

// WaitErr waits up to timeout for a received message (past or future)
// matching match, and returns the first one and every message received
// before it. Messages are kept: a later wait sees them again.
func (c *Client) WaitErr(match func(Message) bool, timeout time.Duration) (Message, []Message, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		msgs := c.Messages()
		for i, m := range msgs {
			if match(m) {
				return m, msgs[:i], nil
			}
		}
		select {
		case <-c.notify:
		case <-deadline.C:
			return Message{}, msgs, ErrTimeout
		}
	}
}

// WaitFor waits up to WaitTimeout for a message on topic and returns it with
// every message received before it; it fails the test on timeout.
func (c *Client) WaitFor(t testing.TB, topic string) (Message, []Message) {
	t.Helper()
	m, before, err := c.WaitErr(func(m Message) bool { return m.Topic == topic }, WaitTimeout)
	if err != nil {
		t.Fatalf("testenv: waiting for a message on %s: %v (received: %s)", topic, err, summarize(before))
	}
	return m, before
}

// WaitMatch waits up to WaitTimeout for a message matching match and
// returns it with every message received before it; it fails the test on
// timeout.
func (c *Client) WaitMatch(t testing.TB, what string, match func(Message) bool) (Message, []Message) {
	t.Helper()
	m, before, err := c.WaitErr(match, WaitTimeout)
	if err != nil {
		t.Fatalf("testenv: waiting for %s: %v (received: %s)", what, err, summarize(before))
	}
	return m, before
}

// WaitPayload waits up to WaitTimeout for a message on topic with exactly
// payload; see WaitMatch.
func (c *Client) WaitPayload(t testing.TB, topic, payload string) (Message, []Message) {
	t.Helper()
	return c.WaitMatch(t, fmt.Sprintf("%q on %s", payload, topic), func(m Message) bool {
		return m.Topic == topic && string(m.Payload) == payload
	})
}

// Reset forgets the messages received so far.
func (c *Client) Reset() {
	c.mu.Lock()
	c.msgs = nil
	c.mu.Unlock()
}

func summarize(msgs []Message) string {
	if len(msgs) == 0 {
		return "nothing"
	}
	s := ""
	for i, m := range msgs {
		if i > 0 {
			s += ", "
		}
		s += fmt.Sprintf("%s %q", m.Topic, m.Payload)
	}
	return s
}
