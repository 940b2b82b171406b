package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/internal/lograte"
	"github.com/thermofleet/thermo/internal/workq"
	"github.com/thermofleet/thermo/provisioning"
)

// ErrNotConnected is returned by Publish while the client is not connected.
// Nothing is queued: the sync protocol repairs what an outage lost by
// sending its full state on every connect.
var ErrNotConnected = errors.New("not connected to the broker")

// Message is an MQTT message, received or to publish.
type Message struct {
	Topic    string
	Payload  []byte
	QoS      byte
	Retained bool
}

// Defaults of Options.
const (
	DefaultKeepAlive = 15 * time.Second
	// DefaultConnectTimeout is how long a device waits for a broker that
	// accepted its connection. 30 s served a 10,000-device stampede on
	// the embedded broker in order (its queue took 10-15 s on two
	// cores), but left hundreds of devices stalled for up to 34 s on
	// Mosquitto, whose accept queue holds 100; at 10 s they start over
	// and get in (docs/scale.md, step 14).
	DefaultConnectTimeout = 10 * time.Second
	DefaultDialTimeout    = 1500 * time.Millisecond
	DefaultReconnectMin   = 100 * time.Millisecond
	DefaultReconnectMax   = time.Second
	DefaultPublishTimeout = 10 * time.Second
)

// Options configure a Client. Broker, CAFile, CertFile and KeyFile are
// required; everything else has a default.
type Options struct {
	// Broker is the broker's address, mqtts://HOST:PORT (port 8883 when
	// omitted). Only TLS is supported; HOST is verified against the
	// broker's certificate.
	Broker string
	// Failover lists further addresses of the same broker cluster, in the
	// form of Broker. A connect attempt that fails moves to the next
	// address, in order and round again, with the same backoff between
	// attempts as for one broker; a connection that is lost retries its
	// own broker first (a blip should not move a fleet), and moves on only
	// if that fails. Nothing here copies state between brokers: the sync
	// protocol's full state on every connect does.
	Failover []string
	// CAFile is the CA that issued the broker's certificate; CertFile and
	// KeyFile are this client's certificate, whose Common Name is its id.
	CAFile, CertFile, KeyFile string
	// ClientID defaults to the certificate's Common Name; brokers of this
	// product refuse any other. Required without CertFile.
	ClientID string
	// Username and Password, when Username is set, are sent in CONNECT:
	// for a broker that knows its clients by password instead of by
	// certificate (Home Assistant's Mosquitto add-on), never the fleet's.
	Username, Password string
	// TLS, when set, is used instead of CAFile, CertFile and KeyFile: a
	// broker outside the fleet's PKI, verified against TLS.RootCAs (the
	// system's roots when nil). ServerName defaults to the broker's host.
	TLS *tls.Config
	// AllowPlain accepts a broker address mqtt://HOST[:PORT] (port 1883
	// when omitted): no TLS at all, for a broker on a LAN that offers
	// nothing else. The fleet's links never set it.
	AllowPlain bool
	// KeepAlive is the MQTT keep-alive sent to the broker; a broker silent
	// for this long is dropped. Default 15s.
	KeepAlive time.Duration
	// ConnectTimeout bounds one connection attempt: TCP, TLS and CONNACK.
	ConnectTimeout time.Duration
	// DialStagger, when positive and under DialTimeout, starts another TCP
	// connect every DialStagger while the earlier ones to the same address
	// are unanswered; the first to finish is used, the others are closed.
	// It is for a single client that every other waits for, the
	// controller: after a partition heals it is back at most DialStagger
	// later instead of at its next attempt. Not for a fleet of devices: it
	// multiplies their SYNs.
	DialStagger time.Duration
	// Dial opens one TCP connection to the broker's address, TLS is done
	// over it; nil means a net.Dialer with the keep-alive above. A seam for
	// a proxy or a tunnel, and for tests.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// DialTimeout bounds the TCP connect to one of the broker's addresses,
	// inside ConnectTimeout (name resolution is not counted). A SYN that
	// is not answered is resent by the kernel only after 1, 3, 7, 15 s, so
	// after a partition, or against a frozen broker whose listen queue is
	// full, an unbounded connect may wait seconds after the broker is
	// reachable again; a fresh attempt after the backoff is sooner. The
	// default, 1.5 s, lets the kernel resend a lost SYN once and suits any
	// link whose round trip is under a second.
	DialTimeout time.Duration
	// PublishTimeout bounds the wait for a QoS 1 acknowledgement.
	PublishTimeout time.Duration
	// Backoff between reconnect attempts; zero fields take DefaultReconnectMin
	// and DefaultReconnectMax. After an attempt the broker's host refused
	// (nothing listens on the port: a broker restarting) the wait is half
	// as long (Backoff.After).
	Backoff Backoff
	// Will is published by the broker if the connection dies; QoS and Retained apply.
	Will *Message
	// Farewell is published (and awaited briefly) before a clean
	// disconnect, since the broker sends no will then.
	Farewell *Message
	// OnConnect runs after each successful connection, once the broker has
	// acknowledged the subscriptions, and before any message of the new
	// session is handed to Handler.
	OnConnect func(ctx context.Context, c *Client)
	// OnDisconnect runs after a connection is lost.
	OnDisconnect func(err error)
	// OnTrouble runs when a Trouble begins (active, with what was seen)
	// and when it ends, in order with OnConnect and OnDisconnect.
	OnTrouble func(t Trouble, active bool, detail string)
	// Handler receives every message of every subscription, in order.
	Handler func(Message)
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Stats are counters of a Client's connection history.
type Stats struct {
	// Broker is the address of the last successful connection, or of the
	// first broker before any.
	Broker        string
	Connects      int       // successful connections
	Losses        int       // connections lost
	Attempts      int       // connection attempts, successful or not
	LastConnected time.Time // when the last connection succeeded
	LastLost      time.Time // when the last loss was noticed
	// LastSubscribed is when the last connection's subscriptions were
	// acknowledged: from then on the client receives what it is owed.
	LastSubscribed time.Time
}

// Client is a self-healing MQTT connection. Create it with New, start it
// with Run.
type Client struct {
	opts    Options
	id      string
	brokers []*url.URL // Broker, then Failover
	// tls verifies every broker of brokers that is mqtts:// (ServerName,
	// unless set, is each one's host); nil when none is. Replaced by
	// SetCertificate.
	tls atomic.Pointer[tls.Config]
	log *slog.Logger

	connected atomic.Bool
	queue     *workq.Queue[func(context.Context)] // handlers, run in order by runQueue

	mu     sync.Mutex
	subs   map[string]byte
	pc     mqtt.Client
	lostCh chan error // reports the loss of the current connection
	stats  Stats

	// Only the Run goroutine uses these.
	next        int // index in brokers of the next attempt
	takeover    takeoverGuard
	failures    *lograte.Limiter // connect failures, by kind
	tlsRefusals int              // TLS refusals since the last connection
	tlsTrouble  bool             // TroubleTLSRefused reported active

}

// New checks the options, loads the certificates and returns a Client that
// has not connected yet.
func New(o Options) (*Client, error) {
	parse := ParseBroker
	if o.AllowPlain {
		parse = ParseBrokerOrPlain
	}
	var urls []*url.URL
	for _, b := range append([]string{o.Broker}, o.Failover...) {
		u, err := parse(b)
		if err != nil {
			return nil, err
		}
		urls = append(urls, u)
	}
	var base *tls.Config // nil until a broker needs TLS
	var err error
	for _, u := range urls {
		switch {
		case u.Scheme == "mqtt" || base != nil:
		case o.TLS != nil:
			base = o.TLS.Clone()
			if base.MinVersion == 0 {
				base.MinVersion = tls.VersionTLS12
			}
		default:
			if base, err = provisioning.LoadClientTLS(o.CAFile, o.CertFile, o.KeyFile); err != nil {
				return nil, fmt.Errorf("transport: %w", err)
			}
		}
	}
	if base != nil {
		// Resumed TLS sessions skip the certificate exchange and
		// signatures on reconnect: cheaper for the broker when a whole
		// fleet comes back. One entry per broker, so that failing over
		// and back resumes too.
		base.ClientSessionCache = tls.NewLRUClientSessionCache(len(urls))
	}
	id := o.ClientID
	if id == "" {
		if o.CertFile == "" || o.TLS != nil || base == nil {
			return nil, errors.New("transport: no client id: without a client certificate, ClientID is required")
		}
		if id, err = provisioning.CommonName(o.CertFile); err != nil {
			return nil, fmt.Errorf("transport: %w", err)
		}
	}
	if o.KeepAlive <= 0 {
		o.KeepAlive = DefaultKeepAlive
	}
	if o.KeepAlive < time.Second {
		return nil, fmt.Errorf("transport: keep-alive %v is under the MQTT minimum of 1s", o.KeepAlive)
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = DefaultConnectTimeout
	}
	if o.Dial == nil {
		o.Dial = (&net.Dialer{KeepAlive: o.KeepAlive}).DialContext
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = DefaultDialTimeout
	}
	o.DialTimeout = min(o.DialTimeout, o.ConnectTimeout)
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.Backoff.Min <= 0 {
		o.Backoff.Min = DefaultReconnectMin
	}
	if o.Backoff.Max <= 0 {
		o.Backoff.Max = max(DefaultReconnectMax, o.Backoff.Min)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Client{
		opts: o, id: id, brokers: urls,
		log:   o.Logger.With("client", id),
		queue: workq.New[func(context.Context)](),
		subs:  map[string]byte{},
		stats: Stats{Broker: urls[0].String()},

		takeover: takeoverGuard{backoff: TakeoverBackoff},
		failures: lograte.New(lograte.DefaultInterval, nil),
	}
	if base != nil {
		c.tls.Store(base)
	}
	return c, nil
}

// CheckKeepAlive reports why d cannot be a client's MQTT keep-alive: the
// protocol counts it in whole seconds, at least one. (New itself only
// refuses less than a second, and paho truncates the rest.)
func CheckKeepAlive(d time.Duration) error {
	if d < time.Second || d%time.Second != 0 {
		return errors.New("MQTT counts keep-alive in whole seconds, at least 1s")
	}
	return nil
}

// ParseBroker checks a broker address: mqtts://HOST[:PORT] (also ssl:// or
// tls://), with port 8883 by default. Plain-text schemes are refused.
func ParseBroker(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("broker address %q: %w", s, err)
	}
	switch u.Scheme {
	case "mqtts", "ssl", "tls":
	case "mqtt", "tcp":
		return nil, fmt.Errorf("broker address %q: plain-text MQTT is not supported, use mqtts://", s)
	default:
		return nil, fmt.Errorf("broker address %q: want mqtts://HOST:PORT", s)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("broker address %q: no host", s)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "8883")
	}
	u.Scheme = "mqtts"
	return u, nil
}

// ParseBrokerOrPlain is ParseBroker that also accepts a plain-text broker,
// mqtt://HOST[:PORT] (or tcp://), port 1883 by default: for Options with
// AllowPlain.
func ParseBrokerOrPlain(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "mqtt" && u.Scheme != "tcp" {
		return ParseBroker(s)
	}
	if u.Hostname() == "" {
		return nil, fmt.Errorf("broker address %q: no host", s)
	}
	if u.Port() == "" {
		u.Host = net.JoinHostPort(u.Hostname(), "1883")
	}
	u.Scheme = "mqtt"
	return u, nil
}

// ID is the MQTT client id: the Common Name of the client certificate.
func (c *Client) ID() string { return c.id }

// Connected reports whether a connection is up now.
func (c *Client) Connected() bool { return c.connected.Load() }

// Stats returns the connection counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stats
}

// Subscribe adds a filter that every connection subscribes to. While
// connected it subscribes at once and waits for the broker's answer.
func (c *Client) Subscribe(filter string, qos byte) error {
	c.mu.Lock()
	c.subs[filter] = qos
	pc := c.pc
	c.mu.Unlock()
	if pc == nil || !c.Connected() {
		return nil
	}
	return c.subscribe(pc, map[string]byte{filter: qos})
}

// Unsubscribe removes a filter.
func (c *Client) Unsubscribe(filter string) error {
	c.mu.Lock()
	delete(c.subs, filter)
	pc := c.pc
	c.mu.Unlock()
	if pc == nil || !c.Connected() {
		return nil
	}
	t := pc.Unsubscribe(filter)
	if !t.WaitTimeout(c.opts.PublishTimeout) {
		return fmt.Errorf("unsubscribe %s: no answer in %v", filter, c.opts.PublishTimeout)
	}
	return t.Error()
}

func (c *Client) subscribe(pc mqtt.Client, filters map[string]byte) error {
	if len(filters) == 0 {
		return nil
	}
	t := pc.SubscribeMultiple(filters, c.receive)
	if !t.WaitTimeout(c.opts.PublishTimeout) {
		return fmt.Errorf("subscribe: no answer in %v", c.opts.PublishTimeout)
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("subscribe: %w", err)
	}
	if st, ok := t.(*mqtt.SubscribeToken); ok {
		for f, code := range st.Result() {
			if code == 0x80 {
				return fmt.Errorf("subscribe %s: refused by the broker", f)
			}
		}
	}
	return nil
}

// Publish sends a message and, for QoS 1, waits for the broker's
// acknowledgement. It fails with ErrNotConnected when there is no
// connection rather than queueing.
func (c *Client) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	c.mu.Lock()
	pc := c.pc
	c.mu.Unlock()
	if pc == nil || !c.Connected() {
		return ErrNotConnected
	}
	t := pc.Publish(topic, qos, retain, payload)
	ctx, cancel := context.WithTimeout(ctx, c.opts.PublishTimeout)
	defer cancel()
	select {
	case <-t.Done():
	case <-ctx.Done():
		return fmt.Errorf("publish %s: %w", topic, ctx.Err())
	}
	if err := t.Error(); err != nil {
		return fmt.Errorf("publish %s: %w", topic, err)
	}
	if !c.Connected() && qos > 0 {
		return ErrNotConnected
	}
	return nil
}

// receive is paho's message callback. It only queues: the handler runs on
// the dispatcher goroutine.
func (c *Client) receive(_ mqtt.Client, m mqtt.Message) {
	msg := Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos(), Retained: m.Retained()}
	c.queue.Push(func(context.Context) {
		if c.opts.Handler != nil {
			c.opts.Handler(msg)
		}
	})
}

// Run connects and keeps reconnecting until ctx is done, then publishes
// the farewell and disconnects cleanly. It returns nil on cancellation.
func (c *Client) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); runQueue(ctx, c.queue) }()
	defer wg.Wait()

	attempt := 0
	for {
		var (
			wait     time.Duration
			takeover bool // the takeover policy's wait applies
		)
		lost, err := c.connect(ctx)
		if err == nil {
			attempt = 0
			if err = c.await(ctx, lost); ctx.Err() != nil {
				c.shutdown()
				return nil
			}
			wait, takeover = c.lost(err)
		} else if ctx.Err() == nil {
			c.connectFailed(ctx, attempt, err)
			// The next attempt goes to the next broker of the cluster.
			c.next = (c.next + 1) % len(c.brokers)
		}
		if ctx.Err() != nil {
			return nil
		}
		if !takeover {
			wait = c.opts.Backoff.After(attempt, err)
			attempt++
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// await waits for the connection to be lost, and returns why, or for ctx
// to end. During a takeover episode it ends the episode once the
// connection has stayed up for TakeoverStable.
func (c *Client) await(ctx context.Context, lost <-chan error) error {
	var stable <-chan time.Time
	if c.takeover.active() {
		t := time.NewTimer(TakeoverStable)
		defer t.Stop()
		stable = t.C
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-lost:
			return err
		case <-stable:
			stable = nil
			c.takeover.end()
			c.log.Info("connection stable again: the session is no longer taken over", "up_for", TakeoverStable)
			c.trouble(TroubleTakeover, false, "")
		}
	}
}

// lost records the loss of a connection and returns the wait before the
// next attempt when the takeover policy sets it (takeover true); else the
// ordinary backoff applies.
func (c *Client) lost(err error) (wait time.Duration, takeover bool) {
	c.connected.Store(false)
	now := time.Now()
	c.mu.Lock()
	c.stats.Losses++
	c.stats.LastLost = now
	up := c.stats.LastConnected
	c.mu.Unlock()
	c.log.Warn("connection lost", "broker", c.brokers[c.next].Host, "err", err, "up_for", now.Sub(up).Round(time.Millisecond))
	c.queue.Push(func(context.Context) {
		if c.opts.OnDisconnect != nil {
			c.opts.OnDisconnect(err)
		}
	})
	if wait, takeover = c.takeover.lost(now, keepAliveFailed(err)); takeover {
		c.log.Warn("connection closed by the broker again: the session is being taken over; backing off",
			"retry_in", wait.Round(time.Millisecond))
	}
	return wait, takeover
}

// connectFailed logs a failed attempt: at WARN for the first failure of a
// kind and then at most once per lograte interval with the count of
// attempts since (so a failure that persists neither floods the log nor
// goes quiet), at DEBUG otherwise. It also feeds the takeover policy and
// the TLS refusal count.
func (c *Client) connectFailed(ctx context.Context, attempt int, err error) {
	c.takeover.failed()
	key := "connect"
	args := []any{"broker", c.brokers[c.next].Host, "attempt", attempt, "err", err}
	if why, ok := tlsRefusal(err); ok {
		key = "tls"
		args = append(args, "refused", why)
		c.tlsRefusals++
		if c.tlsRefusals == TLSRefusedAfter {
			c.tlsTrouble = true
			c.trouble(TroubleTLSRefused, true, fmt.Sprintf("%d connect attempts in a row refused: %s (%v)", TLSRefusedAfter, why, err))
		}
	}
	if ok, n := c.failures.Allow(key); ok {
		c.log.Log(ctx, slog.LevelWarn, "connect failed", append(args, "attempts", n, "report_every", c.failures.Interval())...)
		return
	}
	c.log.Log(ctx, slog.LevelDebug, "connect failed", args...)
}

// connectSucceeded ends what a successful connection ends, the failures
// being reported and a TLS refusal, and gives the takeover policy its
// verdict on the loss before (resumed: this connection resumed the TLS
// session of an earlier one). It runs before OnConnect is queued.
func (c *Client) connectSucceeded(resumed bool) {
	if c.takeover.connected(resumed) {
		detail := fmt.Sprintf("the broker closed this client's healthy connection %d times within %v and let it straight back in: another client is probably using the same certificate",
			TakeoverCount, TakeoverWindow)
		c.log.Warn("session taken over repeatedly: backing off from now on", "detail", detail, "backoff_max", TakeoverBackoff.Max)
		c.trouble(TroubleTakeover, true, detail)
	}
	c.failures.Reset("connect")
	c.failures.Reset("tls")
	c.tlsRefusals = 0
	if c.tlsTrouble {
		c.tlsTrouble = false
		c.trouble(TroubleTLSRefused, false, "")
	}
}

// trouble queues an OnTrouble call.
func (c *Client) trouble(t Trouble, active bool, detail string) {
	if c.opts.OnTrouble == nil {
		return
	}
	c.queue.Push(func(context.Context) { c.opts.OnTrouble(t, active, detail) })
}

// connect makes one attempt: TLS connection, CONNECT, subscriptions. On
// success it returns the channel that reports the connection's loss.
func (c *Client) connect(ctx context.Context) (<-chan error, error) {
	broker := c.brokers[c.next]
	lost := make(chan error, 1)
	c.mu.Lock()
	c.lostCh = lost
	c.mu.Unlock()
	var conn *liveConn
	// One broker per paho client: with several, paho would try them in
	// turn inside one Connect, without the backoff, the per-attempt
	// counters and the TLS refusal accounting of Run.
	o := mqtt.NewClientOptions().
		AddBroker(broker.String()).
		SetClientID(c.id).
		// MQTT 3.1.1 only. Left to guess, paho retries a failed connect
		// with MQTT 3.1 on a second connection: two attempts where one
		// was meant, and the second one's error (often a reset) hides the
		// first one's (a refused certificate).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetResumeSubs(false).
		SetOrderMatters(true).
		SetKeepAlive(c.opts.KeepAlive).
		SetPingTimeout(c.opts.KeepAlive).
		SetConnectTimeout(c.opts.ConnectTimeout).
		SetWriteTimeout(c.opts.PublishTimeout).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		}).
		SetCustomOpenConnectionFn(func(u *url.URL, _ mqtt.ClientOptions) (net.Conn, error) {
			cn, err := c.dial(ctx, u)
			if err != nil {
				return nil, err
			}
			conn = cn
			return cn, nil
		})
	if c.opts.Username != "" {
		o.SetUsername(c.opts.Username).SetPassword(c.opts.Password)
	}
	if w := c.opts.Will; w != nil {
		o.SetBinaryWill(w.Topic, w.Payload, w.QoS, w.Retained)
	}
	pc := mqtt.NewClient(o)
	c.mu.Lock()
	c.stats.Attempts++
	c.mu.Unlock()
	t := pc.Connect()
	if !t.WaitTimeout(c.opts.ConnectTimeout + time.Second) {
		pc.Disconnect(0)
		return nil, fmt.Errorf("connect: no CONNACK in %v", c.opts.ConnectTimeout)
	}
	if err := t.Error(); err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	conn.established.Store(true)
	c.connectSucceeded(conn.resumed && conn.sessions.sameIssuer())
	go conn.monitor(c.opts.KeepAlive, func(silent time.Duration) {
		c.log.Warn("broker silent, dropping the connection", "broker", broker.Host, "silent", silent.Round(time.Millisecond))
	})

	c.mu.Lock()
	c.pc = pc
	subs := make(map[string]byte, len(c.subs))
	for f, q := range c.subs {
		subs[f] = q
	}
	c.stats.Connects++
	c.stats.LastConnected = time.Now()
	c.stats.Broker = broker.String()
	c.mu.Unlock()
	c.connected.Store(true)
	// OnConnect is queued before subscribing, so it runs before any message
	// of this session, retained ones included; and it waits for the broker
	// to acknowledge the subscriptions, so that when it runs "connected"
	// also means "subscribed".
	subscribed := make(chan bool, 1)
	c.queue.Push(func(ctx context.Context) {
		select {
		case ok := <-subscribed:
			if !ok {
				return
			}
		case <-ctx.Done():
			return
		}
		if c.opts.OnConnect != nil && c.Connected() {
			c.opts.OnConnect(ctx, c)
		}
	})
	if err := c.subscribe(pc, subs); err != nil {
		subscribed <- false
		c.connected.Store(false)
		pc.Disconnect(0)
		return nil, err
	}
	c.mu.Lock()
	c.stats.LastSubscribed = time.Now()
	c.mu.Unlock()
	c.log.Info("connected", "broker", broker.Host)
	subscribed <- true
	return lost, nil
}

// dial opens the TLS connection paho runs MQTT over, verifying the broker's
// certificate against the CA and the host name (or, for a plain broker that
// AllowPlain accepted, the TCP connection).
func (c *Client) dial(ctx context.Context, u *url.URL) (*liveConn, error) {
	ctx, cancel := context.WithTimeout(ctx, c.opts.ConnectTimeout)
	defer cancel()
	raw, err := c.dialTCP(ctx, u)
	if err != nil {
		return nil, err
	}
	if tc, ok := raw.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	conf := c.tls.Load()
	if conf == nil || u.Scheme == "mqtt" { // plain mqtt://, AllowPlain
		return newLiveConn(raw, time.Now()), nil
	}
	conf = conf.Clone()
	if conf.ServerName == "" {
		conf.ServerName = u.Hostname()
	}
	var sessions *brokerSessions
	if conf.ClientSessionCache != nil {
		sessions = &brokerSessions{cache: conf.ClientSessionCache, addr: u.Host}
		conf.ClientSessionCache = sessions
	}
	tc := tls.Client(raw, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		sessions.handshakeFailed(err)
		return nil, fmt.Errorf("tls: %w", err)
	}
	l := newLiveConn(tc, time.Now())
	l.resumed = tc.ConnectionState().DidResume
	l.sessions = sessions
	return l, nil
}

func (c *Client) shutdown() {
	c.mu.Lock()
	pc := c.pc
	c.mu.Unlock()
	if pc == nil {
		return
	}
	if f := c.opts.Farewell; f != nil && c.Connected() {
		t := pc.Publish(f.Topic, f.QoS, f.Retained, f.Payload)
		t.WaitTimeout(time.Second)
	}
	c.connected.Store(false)
	pc.Disconnect(250)
}

// runQueue runs q's functions in order on the calling goroutine until ctx
// is done: the dispatcher, so handlers may persist and publish without
// stalling paho.
func runQueue(ctx context.Context, q *workq.Queue[func(context.Context)]) {
	for {
		items := q.Drain()
		for _, f := range items {
			if ctx.Err() != nil {
				return
			}
			f(ctx)
		}
		if len(items) > 0 {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-q.Wake():
		}
	}
}
