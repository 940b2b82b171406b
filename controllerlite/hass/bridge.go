// Package hass bridges the fleet to Home Assistant over Home Assistant's
// own MQTT broker, with MQTT discovery: every device becomes a climate
// entity (and a temperature sensor per sensor it reports), its state
// topics follow the fleet, and Home Assistant's commands become controller
// writes through fleet.Set, the path of the HTTP API. The fleet's own
// mutual-TLS broker stays closed to Home Assistant: the controller is the
// only client of both.
//
// Every state topic carries a plain value (21.5, heat, online), retained,
// so the discovery document needs no template and a client reading it
// knows every topic from it alone. The bridge publishes only what changed
// since it last published, everything again after each reconnect and when
// Home Assistant announces it started (its birth message), and an empty
// retained document for an entity that is gone (a deleted device, a sensor
// removed from a device's configuration).
package hass

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// Backoff spaces reconnects to Home Assistant's broker. It restarts at
// every outage (see transport).
var Backoff = transport.Backoff{Min: 200 * time.Millisecond, Max: 10 * time.Second}

// commandTimeout bounds one write from Home Assistant.
const commandTimeout = 10 * time.Second

// retryDelay is the wait before publishing again what failed to publish
// while the connection was up.
const retryDelay = time.Second

// Options configure a Bridge. Broker is required.
type Options struct {
	// Broker is Home Assistant's broker: mqtt://HOST[:PORT] (plain text,
	// port 1883) or mqtts://HOST[:PORT] (TLS, port 8883, verified).
	Broker string
	// Username and Password log in to it.
	Username, Password string
	// CAFile is a private CA for an mqtts:// broker; the system's roots
	// when empty.
	CAFile string
	// Prefix is Home Assistant's discovery prefix, DefaultPrefix if empty.
	Prefix string
	// TopicRoot is the first level of the bridge's state and command
	// topics, DefaultTopicRoot if empty.
	TopicRoot string
	// ClientID defaults to "controllerlite-" and the root.
	ClientID string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Check validates o and fills in its defaults.
func (o *Options) Check() error {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.TopicRoot == "" {
		o.TopicRoot = DefaultTopicRoot
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if err := protocol.CheckRoot(o.Prefix); err != nil {
		return fmt.Errorf("--ha-prefix: %w", err)
	}
	if err := protocol.CheckRoot(o.TopicRoot); err != nil {
		return fmt.Errorf("--ha-topic-root: %w", err)
	}
	u, err := transport.ParseBrokerOrPlain(o.Broker)
	if err != nil {
		return fmt.Errorf("--ha-broker: %w", err)
	}
	if o.CAFile != "" && u.Scheme != "mqtts" {
		return errors.New("--ha-ca is for an mqtts:// broker: " + o.Broker + " is plain text")
	}
	if o.Password != "" && o.Username == "" {
		return errors.New("--ha-password-file needs --ha-username")
	}
	if o.ClientID == "" {
		o.ClientID = "controllerlite-" + Topics{Root: o.TopicRoot}.node()
	}
	return nil
}

// ReadPasswordFile reads a password from path: the whole file less its
// final line break. A file that every user of the machine may read is
// refused, as is an empty one.
func ReadPasswordFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	if fi.Mode().Perm()&0o007 != 0 {
		return "", fmt.Errorf("read password: %s is open to every user (mode %v): chmod o-rwx %s", path, fi.Mode().Perm(), path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read password: %w", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(string(b), "\n"), "\r")
	if pw == "" {
		return "", fmt.Errorf("read password: %s is empty", path)
	}
	return pw, nil
}

// Fleet is what the bridge uses of a *fleet.Fleet.
type Fleet interface {
	Ready() <-chan struct{}
	Watch() *fleet.Watcher
	Devices() []fleet.Device
	Device(id string) (fleet.Device, bool)
	Set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error)
}

var _ Fleet = (*fleet.Fleet)(nil)

// Bridge links a fleet to Home Assistant's broker. Create it with New,
// run it with Run.
type Bridge struct {
	f      Fleet
	t      Topics
	log    *slog.Logger
	client *transport.Client

	mu    sync.Mutex
	dirty map[string]bool   // devices to publish again
	force map[string]bool   // devices to publish again, unchanged values too
	all   bool              // everything to publish again (a connect, a birth)
	stale map[string][]byte // retained discovery documents of this bridge seen on the broker, by topic
	wake  chan struct{}

	// Only the Run goroutine uses these.
	published map[string]string              // topic to the payload last published (retained)
	owned     map[string]map[string][]string // device id to its entities' config topics to their state topics
}

// New checks o and returns a bridge that has not connected yet.
func New(f Fleet, o Options) (*Bridge, error) {
	if err := o.Check(); err != nil {
		return nil, err
	}
	b := &Bridge{
		f: f, t: Topics{Prefix: o.Prefix, Root: o.TopicRoot}, log: o.Logger,
		dirty: map[string]bool{}, force: map[string]bool{}, stale: map[string][]byte{}, wake: make(chan struct{}, 1),
		published: map[string]string{}, owned: map[string]map[string][]string{},
	}
	if u, _ := url.Parse(o.Broker); u != nil && (u.Scheme == "mqtt" || u.Scheme == "tcp") && o.Password != "" {
		b.log.Warn("Home Assistant's broker is plain text: its password and every command cross the network unencrypted", "broker", o.Broker)
	}
	var conf *tls.Config
	if o.CAFile != "" {
		pool, err := provisioning.LoadCertPool(o.CAFile)
		if err != nil {
			return nil, fmt.Errorf("--ha-ca: %w", err)
		}
		conf = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	} else {
		conf = &tls.Config{MinVersion: tls.VersionTLS12} // the system's roots
	}
	will := &transport.Message{Topic: b.t.BridgeStatus(), Payload: []byte(Offline), QoS: 1, Retained: true}
	c, err := transport.New(transport.Options{
		Broker: o.Broker, AllowPlain: true, TLS: conf,
		ClientID: o.ClientID, Username: o.Username, Password: o.Password,
		Backoff: Backoff, Will: will, Farewell: will,
		OnConnect:    b.connected,
		OnDisconnect: func(err error) { b.log.Warn("Home Assistant's broker: connection lost", "error", err) },
		Handler:      b.receive,
		Logger:       o.Logger.With("part", "hass-link"),
	})
	if err != nil {
		return nil, fmt.Errorf("home assistant: %w", err)
	}
	b.client = c
	// Subscribed on every connection, before OnConnect runs.
	for _, filter := range []string{b.t.Birth(), b.t.CommandFilter(), b.t.ConfigFilter()} {
		if err := c.Subscribe(filter, 1); err != nil {
			return nil, fmt.Errorf("home assistant: %w", err)
		}
	}
	return b, nil
}

// Topics are the bridge's topics.
func (b *Bridge) Topics() Topics { return b.t }

// Run waits until the fleet is ready (a device missing before that may
// only not be read yet), then keeps Home Assistant's broker in step with
// the fleet until ctx is done. On the way out the bridge says "offline".
func (b *Bridge) Run(ctx context.Context) error {
	select {
	case <-b.f.Ready():
	case <-ctx.Done():
		return nil
	}
	w := b.f.Watch()
	defer w.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wg.Add(2)
	go func() { defer wg.Done(); b.client.Run(ctx) }()
	go func() {
		defer wg.Done()
		for {
			ids, err := w.Next(ctx)
			if err != nil {
				return
			}
			b.mark(false, ids...)
		}
	}()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-b.wake:
		case <-retry.C:
		}
		if failed := b.sync(ctx); failed && ctx.Err() == nil {
			retry.Reset(retryDelay)
		}
	}
}

// mark asks the Run goroutine to publish devices ids again, or everything.
func (b *Bridge) mark(all bool, ids ...string) {
	b.mu.Lock()
	b.all = b.all || all
	for _, id := range ids {
		b.dirty[id] = true
	}
	b.mu.Unlock()
	select {
	case b.wake <- struct{}{}:
	default:
	}
}

// connected runs on each connection, subscribed.
func (b *Bridge) connected(context.Context, *transport.Client) {
	b.log.Info("connected to Home Assistant's broker")
	b.mark(true)
}

// sync publishes what changed. It reports whether a publish failed while
// connected (then the device stays marked and is tried again).
func (b *Bridge) sync(ctx context.Context) (failed bool) {
	b.mu.Lock()
	all, dirty, force, stale := b.all, b.dirty, b.force, b.stale
	b.all, b.dirty, b.force, b.stale = false, map[string]bool{}, map[string]bool{}, map[string][]byte{}
	b.mu.Unlock()
	if !b.client.Connected() {
		return false // the next connection publishes everything
	}
	for id := range force {
		for _, states := range b.owned[id] {
			for _, topic := range states {
				delete(b.published, topic)
			}
		}
		dirty[id] = true
	}
	if all {
		clear(b.published)
		if err := b.publish(ctx, b.t.BridgeStatus(), Online); err != nil {
			b.mark(true)
			return b.failed(err)
		}
		for _, d := range b.f.Devices() {
			dirty[d.ID] = true
		}
		for id := range b.owned {
			dirty[id] = true
		}
	}
	for _, id := range slices.Sorted(maps.Keys(dirty)) {
		if err := b.syncDevice(ctx, id); err != nil {
			b.mark(false, id)
			failed = b.failed(err) || failed
		}
	}
	if len(stale) > 0 {
		if err := b.clearStale(ctx, stale); err != nil {
			failed = b.failed(err) || failed
		}
	}
	return failed
}

func (b *Bridge) failed(err error) bool {
	if errors.Is(err, transport.ErrNotConnected) {
		return false
	}
	b.log.Warn("publish to Home Assistant's broker", "error", err)
	return true
}

// syncDevice publishes what changed of one device's entities, and removes
// those it no longer has (all of them when it left the fleet).
func (b *Bridge) syncDevice(ctx context.Context, id string) error {
	var want []entity
	if d, ok := b.f.Device(id); ok {
		var err error
		if want, err = entities(b.t, d); err != nil {
			b.log.Error("device left out of Home Assistant", "device", id, "error", err)
			want = nil
		}
	}
	old := b.owned[id]
	keep := map[string]bool{}
	for _, e := range want {
		keep[e.configTopic] = true
	}
	for _, cfg := range slices.Sorted(maps.Keys(old)) {
		if keep[cfg] {
			continue
		}
		// The document first: Home Assistant drops the entity, then
		// the retained values are cleared from the broker.
		for _, topic := range append([]string{cfg}, old[cfg]...) {
			if err := b.publish(ctx, topic, ""); err != nil {
				return err
			}
		}
		b.log.Info("Home Assistant entity removed", "device", id, "config", cfg)
		delete(old, cfg)
	}
	if len(want) == 0 {
		delete(b.owned, id)
		return nil
	}
	if old == nil {
		old = map[string][]string{}
		b.owned[id] = old
	}
	for _, e := range want {
		if err := b.publish(ctx, e.configTopic, string(e.config)); err != nil {
			return err
		}
		old[e.configTopic] = e.stateTopics
		for _, topic := range slices.Sorted(maps.Keys(e.states)) {
			if err := b.publish(ctx, topic, e.states[topic]); err != nil {
				return err
			}
		}
	}
	return nil
}

// publish publishes payload on topic, retained, unless it is what was
// last published there; an empty payload clears the topic.
func (b *Bridge) publish(ctx context.Context, topic, payload string) error {
	if last, ok := b.published[topic]; ok && last == payload {
		return nil
	}
	if err := b.client.Publish(ctx, topic, []byte(payload), 1, true); err != nil {
		delete(b.published, topic)
		return err
	}
	if payload == "" {
		delete(b.published, topic)
	} else {
		b.published[topic] = payload
	}
	return nil
}

// clearStale removes discovery documents of this bridge that the broker
// kept (retained) and that no device of the fleet has now (a device
// deleted while the controller was not running), and the retained states
// they name under this bridge's root.
func (b *Bridge) clearStale(ctx context.Context, stale map[string][]byte) error {
	for _, topic := range slices.Sorted(maps.Keys(stale)) {
		if b.ownedConfig(topic) {
			continue
		}
		if err := b.publish(ctx, topic, ""); err != nil {
			return err
		}
		for _, st := range b.stateTopicsOf(stale[topic]) {
			if b.ownedState(st) {
				continue // a device still in the fleet (its sensor went)
			}
			if err := b.publish(ctx, st, ""); err != nil {
				return err
			}
		}
		b.log.Info("Home Assistant entity of a device no longer in the fleet removed", "config", topic)
	}
	return nil
}

// stateTopicsOf are the retained topics a discovery document of this
// bridge names: its state and availability topics under the bridge's
// root, but not the bridge's own status (other devices share it) nor a
// command topic (never retained).
func (b *Bridge) stateTopicsOf(doc []byte) []string {
	var d map[string]any
	if json.Unmarshal(doc, &d) != nil {
		return nil
	}
	var topics []string
	add := func(v any) {
		if s, ok := v.(string); ok && strings.HasPrefix(s, b.t.Root+"/") && s != b.t.BridgeStatus() && !slices.Contains(topics, s) {
			topics = append(topics, s)
		}
	}
	for k, v := range d {
		if strings.HasSuffix(k, "_topic") && !strings.HasSuffix(k, "command_topic") {
			add(v)
		}
	}
	if av, ok := d["availability"].([]any); ok {
		for _, a := range av {
			if m, ok := a.(map[string]any); ok {
				add(m["topic"])
			}
		}
	}
	slices.Sort(topics)
	return topics
}

func (b *Bridge) ownedState(topic string) bool {
	for _, cfgs := range b.owned {
		for _, states := range cfgs {
			if slices.Contains(states, topic) {
				return true
			}
		}
	}
	return false
}

func (b *Bridge) ownedConfig(topic string) bool {
	for _, cfgs := range b.owned {
		if _, ok := cfgs[topic]; ok {
			return true
		}
	}
	return false
}

// receive handles a message from Home Assistant's broker, on the
// transport's dispatcher: a birth, a command, or a retained discovery
// document.
func (b *Bridge) receive(m transport.Message) {
	switch {
	case m.Topic == b.t.Birth():
		if string(m.Payload) == Online {
			b.log.Info("Home Assistant started: publishing discovery again")
			b.mark(true)
		}
	case strings.HasPrefix(m.Topic, b.t.Prefix+"/") && strings.HasSuffix(m.Topic, "/config"):
		// Our own documents come back live; one the broker kept from
		// before this connection may be of a device since deleted.
		if m.Retained && len(m.Payload) > 0 {
			b.mu.Lock()
			b.stale[m.Topic] = bytes.Clone(m.Payload)
			b.mu.Unlock()
			b.mark(false)
		}
	default:
		b.command(m)
	}
}

// command applies a command from Home Assistant as a controller write. A
// refused command changes nothing; either way the device's state is
// published again, so Home Assistant shows what is in force.
func (b *Bridge) command(m transport.Message) {
	id, attr, err := b.t.parseCommandTopic(m.Topic)
	if err != nil {
		b.log.Warn("command from Home Assistant ignored", "topic", m.Topic, "error", err)
		return
	}
	defer b.forget(id)
	if m.Retained {
		b.log.Warn("retained command from Home Assistant's broker ignored: a command is applied once, when it is sent", "topic", m.Topic, "payload", string(m.Payload))
		return
	}
	d, ok := b.f.Device(id)
	if !ok {
		b.log.Warn("command from Home Assistant for a device not in the fleet ignored", "device", id, "topic", m.Topic)
		return
	}
	changes, err := commandChanges(d, attr, m.Payload)
	if err != nil {
		b.log.Warn("command from Home Assistant refused", "device", id, "topic", m.Topic, "payload", string(m.Payload), "error", err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), commandTimeout)
	defer cancel()
	if _, err := b.f.Set(ctx, id, changes); err != nil {
		b.log.Warn("command from Home Assistant not written", "device", id, "changes", changes, "error", err)
		return
	}
	b.log.Info("command from Home Assistant", "device", id, "changes", changes)
}

// forget makes the Run goroutine publish device id's state again even
// where it has not changed: Home Assistant may show a value it asked for
// and that was refused or lost.
func (b *Bridge) forget(id string) {
	b.mu.Lock()
	b.force[id] = true
	b.mu.Unlock()
	b.mark(false)
}
