// Package broker is the MQTT broker controllerlite embeds by default.
//
// It wraps mochi-mqtt with the rules of the sync protocol: a TLS listener
// that requires a client certificate from our CA, the certificate's Common
// Name as the client's only identity (the MQTT client id must equal it), an
// ACL that lets a device publish only the contract's topics of its own id
// (retained only where the contract says) and read only its cmd and event,
// and lets the controller publish commands and read <root>/# (the rule is
// protocol.MayPublish and protocol.MaySubscribe), limits that keep one
// client from exhausting the process (protocol.MaxPacketSize, checked before
// a packet is read; a deadline for the TLS handshake and CONNECT), and a
// bolt store in the data directory so that retained messages
// and persistent sessions survive restarts, kill -9 included, and are never
// expired by age. A client that reconnects under its id, however quickly,
// starts its new session only once its old connection is torn down (see
// sessionGate). The controller itself talks to the broker in-process
// through Publish and Subscribe, with no certificate of its own.
package broker

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// Defaults for Options fields left empty.
const (
	DefaultListen = ":8883"
	// DefaultConnectTimeout bounds the time from accepting a TCP connection
	// to reading its MQTT CONNECT, TLS handshake included. Every client of
	// ours sends CONNECT at once; a connection that does not only holds a
	// goroutine, a socket and buffers, and enough of them exhaust the
	// controller.
	DefaultConnectTimeout = 10 * time.Second
	// DefaultAdmitTimeout bounds how long an accepted connection waits for
	// a handshake slot (Options.AdmitTimeout): as long as our devices wait
	// for a broker that accepted them (transport's connect timeout), after
	// which the client has gone and its turn would be a handshake for
	// nobody.
	DefaultAdmitTimeout = 10 * time.Second
	// DefaultClientQueue is how many packets may wait to be written to
	// one client (Options.ClientQueue). A device is sent its retained
	// command and event when it subscribes and then a Command at a time:
	// a few slots. mochi's own default, 8,192, is made up front for every
	// connection (64 KiB of pointers each): 650 MB of a 10,000-device
	// fleet's 1 GB heap (docs/scale.md).
	DefaultClientQueue = 64
)

// clientReadBuffer is the size of the buffer mochi reads each client's
// packets through (its default is 2 KiB, 20 MB for 10,000 devices). A
// device's packets are a few hundred bytes; a longer one is read through
// it in pieces, or straight into the packet (bufio), so it only costs a
// read call more. The TLS connection below keeps its own record buffer.
const clientReadBuffer = 512

// storeFile is the name of the bolt database inside Options.DataDir.
const storeFile = "broker.db"

// listenerID names our single TLS listener inside mochi.
const listenerID = "tls"

// shutdownGrace bounds how long Close waits for client goroutines to end
// before the store is closed under them.
const shutdownGrace = 5 * time.Second

// Options configures a Broker. The zero value of each field means its default.
type Options struct {
	// Listen is the TCP address of the TLS listener, DefaultListen if empty.
	// Use "127.0.0.1:0" in tests and read the real address from Addr.
	Listen string

	// CAFile holds the CA certificate(s) client certificates must chain to.
	CAFile string
	// CertFile and KeyFile are the broker's own server certificate and key.
	CertFile string
	KeyFile  string

	// DataDir holds the broker's store (retained messages, sessions,
	// queued messages). Empty means in memory only: nothing survives Close.
	DataDir string

	// TopicRoot is the first topic level of every topic, protocol.DefaultRoot if
	// empty. It may have several levels ("site/thermo") but no wildcards.
	TopicRoot string

	// Logger receives the broker's and mochi's logs; slog.Default() if nil.
	Logger *slog.Logger

	// Revoked, when set, is asked about every client certificate at
	// CONNECT: a revoked one is refused (the reason is logged). CutRevoked
	// asks it again about the connected clients.
	Revoked func(cert *x509.Certificate) (reason string, revoked bool)

	// ConnectTimeout bounds the TLS handshake and the wait for CONNECT
	// together: the connection is closed when it passes without a CONNECT.
	// DefaultConnectTimeout if zero.
	ConnectTimeout time.Duration

	// AdmitTimeout bounds the wait for a handshake slot before it (a
	// bounded number of handshakes run at once; the others wait in the
	// order they were accepted): under a stampede a connection waits for
	// its turn, and ConnectTimeout starts when it gets it. A connection
	// still waiting at AdmitTimeout is closed. DefaultAdmitTimeout if
	// zero.
	AdmitTimeout time.Duration

	// ClientQueue is how many packets may wait to be written to one
	// network client's connection (mochi's MaximumClientWritesPending,
	// one size for every client, made when it connects); a packet that
	// finds the queue full is dropped, logged and counted in
	// Stats.MessagesDropped. DefaultClientQueue if zero. The one client
	// that needs many is a controller connecting over the network: when
	// it subscribes it is sent every retained message of the fleet at
	// once, about three a device, so give it three times the fleet's
	// size. The controller in this process (Publish, Subscribe) has no
	// queue.
	ClientQueue int
}

// Broker is the embedded MQTT broker. Create it with New, then Start it;
// Close it when done.
type Broker struct {
	opts Options
	log  *slog.Logger
	tls  *tls.Config
	srv  *mqtt.Server
	auth *authHook
	gate *sessionGate
	// identity sees duplicate certificates and refused ones (identity.go).
	identity *identity
	// retained keeps mochi's retained-expiry ticker stopped until a
	// retained message can expire (retained.go); nil if it was not found.
	retained *retainedExpiry
	// cert is the server certificate, replaced by ReloadCertificate.
	cert atomic.Pointer[tls.Certificate]
	// handshake is the TLS configuration of each handshake (the client
	// CAs ReloadCertificate replaces), tickets its session-ticket keys
	// (reload.go, tickets.go).
	handshake atomic.Pointer[tls.Config]
	tickets   *ticketKeys
	// handshakes counts the listener's TLS handshakes (Stats).
	handshakes handshakeCounts

	mu      sync.Mutex
	started bool
	closed  bool
	ln      *tlsListener
	store   *storeHook

	subID atomic.Int64 // last inline subscription id handed out
}

// New checks opts and loads the TLS credentials. It opens no socket and no
// file other than the certificates: Start does.
func New(opts Options) (*Broker, error) {
	if opts.Listen == "" {
		opts.Listen = DefaultListen
	}
	if opts.TopicRoot == "" {
		opts.TopicRoot = protocol.DefaultRoot
	}
	if err := protocol.CheckRoot(opts.TopicRoot); err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ConnectTimeout == 0 {
		opts.ConnectTimeout = DefaultConnectTimeout
	}
	if opts.ConnectTimeout < 0 {
		return nil, fmt.Errorf("broker: connect timeout %v is negative", opts.ConnectTimeout)
	}
	if opts.AdmitTimeout == 0 {
		opts.AdmitTimeout = DefaultAdmitTimeout
	}
	if opts.AdmitTimeout < 0 {
		return nil, fmt.Errorf("broker: admit timeout %v is negative", opts.AdmitTimeout)
	}
	if opts.ClientQueue == 0 {
		opts.ClientQueue = DefaultClientQueue
	}
	if opts.ClientQueue < 1 || opts.ClientQueue > math.MaxInt32 {
		return nil, fmt.Errorf("broker: client queue %d: want 1 to %d packets", opts.ClientQueue, math.MaxInt32)
	}
	if opts.CAFile == "" || opts.CertFile == "" || opts.KeyFile == "" {
		return nil, errors.New("broker: the CA file, certificate file and key file are all required")
	}
	// Requires a client certificate from our CA, TLS 1.2 at least.
	tlsConf, err := provisioning.LoadServerTLS(opts.CAFile, opts.CertFile, opts.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("broker TLS: %w", err)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	// mochi's default of 86400 s deletes retained and queued messages a day
	// after they were published, MQTT 3 clients included: a retained command
	// or event must stand until it is replaced, however old.
	caps.MaximumMessageExpiryInterval = 0
	// Sessions of MQTT 3.1.1 clients (no expiry of their own) are kept this
	// long after disconnecting: about 136 years, that is, forever.
	caps.MaximumSessionExpiryInterval = math.MaxUint32
	// mochi's default 0 means unlimited, and it trusts the length a fixed
	// header announces: five bytes made it allocate 256 MiB for one packet,
	// before CONNECT. With a limit, mochi (ReadFixedHeader, v2.7.9) closes
	// the connection as soon as it has read a larger length, before it
	// allocates the packet; a retained message can never outgrow it either.
	caps.MaximumPacketSize = protocol.MaxPacketSize
	caps.MaximumClientWritesPending = int32(opts.ClientQueue)

	srv := mqtt.New(&mqtt.Options{
		Capabilities: caps,
		InlineClient: true,
		Logger:       opts.Logger,
		// mochi's write buffer (its default stays) is used only while
		// packets queue for a client, and let go once they are written.
		ClientNetReadBufferSize: clientReadBuffer,
		// $SYS values are of no use to us; each tick also writes the
		// store (an fsync), so keep them rare.
		SysTopicResendInterval: 60,
	})
	ident, err := newIdentity(opts.Logger, opts.CAFile)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	b := &Broker{
		opts: opts,
		log:  opts.Logger,
		tls:  tlsConf,
		srv:  srv,
		auth: newAuthHook(opts.TopicRoot, opts.Logger, opts.Revoked),
		gate: newSessionGate(opts.Logger, disconnectTakenOver(srv)),

		identity: ident,
	}
	// The server certificate through GetCertificate, so that it can be
	// replaced without a restart (reload.go).
	b.cert.Store(&tlsConf.Certificates[0])
	tlsConf.Certificates = nil
	tlsConf.GetCertificate = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return b.cert.Load(), nil }
	b.auth.gate = b.gate
	b.auth.identity = b.identity
	if err := b.setupTLS(tlsConf); err != nil {
		return nil, fmt.Errorf("broker TLS: %w", err)
	}
	// The only hook that answers OnConnectAuthenticate and OnACLCheck. mochi
	// ORs auth hooks, so an allow-all hook added anywhere would open the
	// broker to everyone.
	if err := srv.AddHook(b.auth, nil); err != nil {
		return nil, fmt.Errorf("add auth hook: %w", err)
	}
	if err := srv.AddHook(newDropHook(opts.Logger, opts.ClientQueue), nil); err != nil {
		return nil, fmt.Errorf("add drop hook: %w", err)
	}
	if re, err := newRetainedExpiry(srv); err != nil {
		opts.Logger.Warn("broker: mochi copies its retained messages every second: its retained-expiry ticker was not found", "error", err)
	} else if err := srv.AddHook(re, nil); err != nil {
		return nil, fmt.Errorf("add retained-expiry hook: %w", err)
	} else {
		b.retained = re
	}
	return b, nil
}

// Start opens the store, restores what it holds, publishes the wills of
// clients that were connected when the broker last died, and then starts
// accepting connections. A broker whose Start failed is closed.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("broker: start after close")
	}
	if b.started {
		return errors.New("broker: already started")
	}

	raw, err := net.Listen("tcp", b.opts.Listen)
	if err != nil {
		return fmt.Errorf("broker: listen on %s: %w", b.opts.Listen, err)
	}
	b.ln = newTLSListener(listenerID, raw, b.tls, b.opts.ConnectTimeout, b.opts.AdmitTimeout, b.log)
	b.ln.counts = &b.handshakes
	if err := b.serve(); err != nil {
		b.closeLocked()
		return err
	}
	b.log.Info("broker listening", "addr", raw.Addr().String(), "topic_root", b.opts.TopicRoot, "data_dir", b.opts.DataDir)
	return nil
}

// serve does the part of Start after the socket is bound.
func (b *Broker) serve() error {
	b.ln.handshakeFailed = b.identity.handshakeFailed
	if b.opts.DataDir != "" {
		if err := b.openStore(); err != nil {
			return err
		}
	} else {
		b.log.Warn("broker has no data directory: retained messages and sessions are kept in memory only")
	}
	// Before the listener opens: a restarted broker's first handshakes
	// already resume the sessions of the run before.
	if err := b.tickets.start(); err != nil {
		return err
	}

	// Serve with no listener yet: it loads the store and starts the
	// housekeeping loop, and no client can connect before the wills below
	// are out (a device's fresh "online" must not be overwritten by them).
	b.started = true
	if err := b.srv.Serve(); err != nil {
		return fmt.Errorf("broker: load store: %w", err)
	}
	if b.store != nil {
		b.publishRestoredWills(b.store.takeWills())
	}
	if err := b.srv.AddListener(b.ln); err != nil {
		return fmt.Errorf("broker: add listener: %w", err)
	}
	// Through the gate: mochi must be done with a client's old connection
	// before its new one starts a session.
	b.srv.Listeners.Serve(listenerID, b.gate.attach(b.srv.EstablishConnection))
	return nil
}

func (b *Broker) openStore() error {
	if err := os.MkdirAll(b.opts.DataDir, 0o700); err != nil {
		return fmt.Errorf("broker: create data dir: %w", err)
	}
	path := filepath.Join(b.opts.DataDir, storeFile)
	if err := store.CheckFile(path, store.CureBroker); err != nil { // garbage pages make bbolt panic inside mochi
		return fmt.Errorf("broker: %w", err)
	}
	b.store = newStoreHook(b.log, b.auth.replaced)
	err := b.srv.AddHook(b.store, &bolt.Options{
		Path: path,
		// Timeout bounds the wait for the file lock held by another
		// process using the same data directory.
		Options: &bbolt.Options{Timeout: 2 * time.Second},
	})
	if err != nil {
		if errors.Is(err, bbolt.ErrTimeout) {
			return fmt.Errorf("broker: open store %s: locked by another process (is another controllerlite using this data dir?): %w", path, err)
		}
		return fmt.Errorf("broker: open store %s: %w", path, err)
	}
	return nil
}

// publishRestoredWills sends the will of every client whose session was
// still open when the broker stopped without closing it (kill -9, power
// loss): for those clients the broker's death is an abrupt disconnect, and
// without this their retained status would say "online" forever.
func (b *Broker) publishRestoredWills(wills []restoredWill) {
	// Concurrently (bounded): each retained will is a store write, and one
	// after another a fleet of 1,000 kept the listener closed for half a
	// second after a restart; together they share the store's commits.
	// Each client has one will, so no order between them matters.
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for _, w := range wills {
		if !b.auth.mayPublish(w.client, w.topic, w.retain) {
			b.log.Warn("restored will dropped: not a publish the client may make", "client", w.client, "topic", w.topic, "retain", w.retain)
			continue
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			if err := b.srv.Publish(w.topic, w.payload, w.retain, w.qos); err != nil {
				b.log.Error("publish restored will", "client", w.client, "topic", w.topic, "error", err)
				return
			}
			b.log.Info("published will of a client connected when the broker last stopped", "client", w.client, "topic", w.topic)
		}()
	}
	wg.Wait()
}

// Addr is the listener's address, nil before Start.
func (b *Broker) Addr() net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln == nil {
		return nil
	}
	return b.ln.Addr()
}

// Close disconnects every client, waits for their goroutines, and closes
// the store. The wills of the disconnected clients are sent (and retained),
// as for any connection the broker ends. It is safe to call more than once.
func (b *Broker) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closeLocked()
}

func (b *Broker) closeLocked() error {
	if b.closed {
		return nil
	}
	b.closed = true
	b.identity.stop()
	b.tickets.stop()
	if b.ln != nil {
		// Stop accepting and disconnect clients before mochi's own Close,
		// which stops the store hook without waiting for client goroutines
		// that may still be writing to it.
		b.srv.Listeners.Close(listenerID, b.disconnectListenerClients) // no-op if never added
		b.ln.shutdown()
		if !b.ln.wait(shutdownGrace) {
			b.log.Warn("broker: client connections still open after grace period", "grace", shutdownGrace)
		}
	}
	return b.srv.Close()
}

func (b *Broker) disconnectListenerClients(listener string) {
	// Not mochi's Clients.GetByListener: v2.7.9 read-locks the clients
	// twice there (through Len), and a client removed in between (a
	// connection ending while the broker closes) deadlocks both, and
	// Close with them (seen in TestQuickReconnect under -race).
	for _, cl := range b.srv.Clients.GetAll() {
		if cl.Net.Listener == listener && !cl.Closed() {
			_ = b.srv.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
}

// OnClient sets a function called when a network client's session is
// established (connected true) and when it ends (false). A client that
// reconnects and takes over its own session reports no disconnect for the
// old connection. fn runs on the client's goroutine: it must not block.
// Set it before Start.
func (b *Broker) OnClient(fn func(id string, connected bool)) {
	b.auth.setOnClient(fn)
}

// Publish publishes a message as the controller, in-process. The topic must
// be under the topic root and have no wildcards. Subscribers receive it
// with at most the given QoS (the in-process side itself is never retried).
func (b *Broker) Publish(topic string, payload []byte, retain bool, qos byte) error {
	if qos > 2 {
		return fmt.Errorf("broker publish %s: invalid QoS %d", topic, qos)
	}
	if topic == "" || strings.ContainsAny(topic, "+#") || !underRoot(b.opts.TopicRoot, topic) {
		return fmt.Errorf("broker publish: topic %q is not a topic under %q", topic, b.opts.TopicRoot)
	}
	b.mu.Lock()
	ok := b.started && !b.closed
	b.mu.Unlock()
	if !ok {
		return errors.New("broker publish: broker not running")
	}
	if err := b.srv.Publish(topic, payload, retain, qos); err != nil {
		return fmt.Errorf("broker publish %s: %w", topic, err)
	}
	return nil
}

// Subscribe delivers every message matching filter (which must be under the
// topic root) to handler, in-process. Retained messages that match are
// delivered at once with retained true; live messages come with retained
// false, as MQTT 3.1.1 delivers them to an existing subscription.
//
// The subscription is registered before the retained messages are read, so
// nothing is missed, but a message published during Subscribe may arrive
// twice (live and retained), in either order. The protocol's clocks make
// duplicates and stale messages harmless.
//
// handler runs on the publishing client's goroutine, concurrently for
// different clients: it must be safe for concurrent use and return quickly.
// payload belongs to handler.
func (b *Broker) Subscribe(filter string, handler func(topic string, payload []byte, retained bool)) error {
	if handler == nil {
		return errors.New("broker subscribe: nil handler")
	}
	if !mqtt.IsValidFilter(filter, false) || !underRoot(b.opts.TopicRoot, filter) {
		return fmt.Errorf("broker subscribe: filter %q is not a filter under %q", filter, b.opts.TopicRoot)
	}
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return errors.New("broker subscribe: broker closed")
	}

	deliver := func(pk packets.Packet, retained bool) {
		payload := append([]byte(nil), pk.Payload...)
		handler(pk.TopicName, payload, retained)
	}
	// Registered on the topic index directly rather than through
	// mochi's Server.Subscribe: that one replays retained messages
	// through the same function as live ones, with no way to tell them
	// apart, and records the in-process subscription in the store as if
	// it were a network client's.
	sub := mqtt.InlineSubscription{
		Subscription: packets.Subscription{Filter: filter, Identifier: int(b.subID.Add(1))},
		Handler: func(_ *mqtt.Client, _ packets.Subscription, pk packets.Packet) {
			deliver(pk, false)
		},
	}
	b.srv.Topics.InlineSubscribe(sub)
	for _, pk := range b.srv.Topics.Messages(filter) {
		deliver(pk, true)
	}
	return nil
}
