// Package fleet is the controller's side of the sync protocol at work: it
// owns the protocol.Controller (one replica and clock per device), feeds it
// every message the broker delivers, persists each change in the store
// before publishing the Command that depends on it, and answers remote
// users' reads and writes.
//
// All protocol state is touched by one goroutine, Run, in the order events
// arrive; messages, connection changes and remote writes are queued to it.
// The broker side is abstracted as a Publisher plus three calls the link
// makes (Receive, LinkUp, LinkDown): AttachBroker wires the embedded broker
// in-process, Connect an external broker through package transport.
//
// Readiness: the controller may not stamp a remote write before it has read
// what the broker retains (every device's latest Event and its own latest
// Commands), or a wiped store would restart its clocks at zero and the
// device would take its writes for duplicates. With the embedded broker the
// retained messages are handed over synchronously when subscribing; with an
// external one the fleet waits, after the subscriptions are acknowledged,
// until no retained message has arrived for QuietPeriod (at most
// RetainedTimeout). Remote writes made before then wait for it, bounded by
// their context.
package fleet

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// Errors of Set, to be told apart with errors.Is.
var (
	// ErrUnknownDevice: no message has ever come from this device.
	ErrUnknownDevice = protocol.ErrUnknownDevice
	// ErrNotReady: the retained state was not read in time.
	ErrNotReady = protocol.ErrNotReady
	// ErrInvalid: a property is unknown or its value is invalid.
	ErrInvalid = errors.New("invalid property")
	// ErrClockExhausted: the controller's clock for the device cannot count
	// another write (only a peer that sent a counter near the protocol's
	// bound can cause it); the write is refused rather than sent with a
	// clock the device must reject.
	ErrClockExhausted = protocol.ErrClockExhausted
	// ErrStopped: Run has returned.
	ErrStopped = errors.New("fleet stopped")
)

// Defaults of Options.
const (
	DefaultQuietPeriod     = 300 * time.Millisecond
	DefaultRetainedTimeout = 5 * time.Second
	DefaultPublishTimeout  = 10 * time.Second
	DefaultFlushInterval   = 5 * time.Second
)

// Publisher publishes to the broker; *transport.Client is one. Commands go
// out with QoS 1, retained.
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
}

// Options configure a Fleet. Store is required.
type Options struct {
	// Store holds the replicas; New loads it, and the fleet writes it.
	Store *store.Store
	// TopicRoot defaults to protocol.DefaultRoot.
	TopicRoot string
	// QuietPeriod and RetainedTimeout decide when an external broker has
	// delivered its retained messages (see the package doc).
	QuietPeriod, RetainedTimeout time.Duration
	// PublishTimeout bounds one publish; a Command that times out stays
	// owed and is sent again on the next connection.
	PublishTimeout time.Duration
	// FlushInterval is how often status, telemetry and last-seen changes
	// are written to the store. They are not needed for correctness, so
	// they are batched; replicas are written at once.
	FlushInterval time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now defaults to time.Now; it stamps last_seen.
	Now func() time.Time
}

// Device is what the fleet knows of one device, as the HTTP API returns it.
type Device struct {
	ID     string `json:"id"`
	Online bool   `json:"online"`
	// VC is the controller's clock for this device.
	VC protocol.Clock `json:"vc"`
	// Props are the values the controller holds, with their write stamps,
	// as on the wire.
	Props protocol.Props `json:"props"`
	// Telemetry is the latest telemetry payload, or null.
	Telemetry json.RawMessage `json:"telemetry"`
	// LastSeen is when a live message last came from the device, or null.
	LastSeen *time.Time `json:"last_seen"`
	// Pending is true while a Command for this device has not been handed
	// to the broker (the controller's own link is down).
	Pending bool `json:"pending"`
	// Alerts are the device's conditions that need a person: those its
	// telemetry reports and those the controller sees (duplicate_identity,
	// tls_refused), sorted by code; [] when none.
	Alerts []protocol.Alert `json:"alerts"`
}

// Status is a summary of the fleet's health and counters.
type Status struct {
	Ready     bool `json:"ready"`
	Connected bool `json:"connected"`
	Devices   int  `json:"devices"`
	// Received counts messages handed to the fleet; Rejected those refused
	// whole; PropsRejected single properties left out of accepted messages.
	Received      uint64 `json:"received"`
	Rejected      uint64 `json:"rejected"`
	PropsRejected uint64 `json:"props_rejected"`
	// Published counts Commands handed to the broker; Owed is how many
	// devices have one waiting.
	Published uint64 `json:"published"`
	Owed      int    `json:"owed"`
}

// Fleet is the controller's protocol engine. Create it with New, run it
// with Run, and attach a broker link.
type Fleet struct {
	opts Options
	root string
	log  *slog.Logger
	st   *store.Store

	q       *queue
	ready   chan struct{} // closed when the retained state has been read
	stopped chan struct{} // closed when Run returns
	running atomic.Bool

	connected     atomic.Bool
	received      atomic.Uint64
	rejected      atomic.Uint64
	propsRejected atomic.Uint64
	published     atomic.Uint64

	mu   sync.RWMutex
	view map[string]Device // what readers see, updated by the loop
	owed int

	// Owned by the Run goroutine.
	ctx   context.Context
	ctrl  *protocol.Controller
	recs  map[string]*store.Device
	dirty map[string]bool
	// A batch: the work queued since the loop last woke is done in one go,
	// and what it changed is stored in one transaction (one fsync) before
	// its Commands are published, in order, by commit. A fleet coming back
	// after an outage sends a burst; a transaction per message would make
	// the last device of the burst wait for every fsync before it.
	persist map[string]bool // records to store before the batch's Commands go out
	pending []command       // the batch's Commands, in the order made
	// commitEach commits after every queued item, as if there were no
	// batches: the benchmarks' baseline.
	commitEach bool
	pub        Publisher
	waiting    bool      // waiting for an external broker's retained messages
	lastRet    time.Time // when the last retained message (or the link) came
	deadline   time.Time // when waiting gives up
	timer      *time.Timer
}

// New loads the store and returns a fleet that is not ready yet.
func New(opts Options) (*Fleet, error) {
	if opts.Store == nil {
		return nil, errors.New("fleet: no store")
	}
	if opts.TopicRoot == "" {
		opts.TopicRoot = protocol.DefaultRoot
	}
	if err := protocol.CheckRoot(opts.TopicRoot); err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	if opts.QuietPeriod <= 0 {
		opts.QuietPeriod = DefaultQuietPeriod
	}
	if opts.RetainedTimeout <= 0 {
		opts.RetainedTimeout = DefaultRetainedTimeout
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = DefaultPublishTimeout
	}
	if opts.FlushInterval <= 0 {
		opts.FlushInterval = DefaultFlushInterval
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	devs, err := opts.Store.Load()
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	replicas := make(map[string]*protocol.Replica, len(devs))
	f := &Fleet{
		opts:    opts,
		root:    opts.TopicRoot,
		log:     opts.Logger,
		st:      opts.Store,
		q:       newQueue(),
		ready:   make(chan struct{}),
		stopped: make(chan struct{}),
		view:    map[string]Device{},
		recs:    map[string]*store.Device{},
		dirty:   map[string]bool{},
		persist: map[string]bool{},
	}
	for _, d := range devs {
		replicas[d.ID] = d.Replica
		f.recs[d.ID] = &d
	}
	f.ctrl = protocol.NewController(replicas)
	for id := range f.recs {
		f.updateView(id)
	}
	f.log.Info("fleet loaded", "devices", len(devs), "store", opts.Store.Path())
	return f, nil
}

// TopicRoot is the topic root the fleet works under.
func (f *Fleet) TopicRoot() string { return f.root }

// Filters are the subscriptions a link must make for the fleet: every
// device's event, status and telemetry, and the controller's own commands.
func (f *Fleet) Filters() []string {
	return []string{
		protocol.Filter(f.root, protocol.KindCmd),
		protocol.Filter(f.root, protocol.KindEvent),
		protocol.Filter(f.root, protocol.KindStatus),
		protocol.Filter(f.root, protocol.KindTelemetry),
	}
}

// Run processes events until ctx is done, then writes what is not yet
// stored. It returns nil on cancellation.
func (f *Fleet) Run(ctx context.Context) error {
	if !f.running.CompareAndSwap(false, true) {
		return errors.New("fleet: Run called twice")
	}
	defer close(f.stopped)
	f.ctx = ctx
	f.timer = time.NewTimer(time.Hour)
	f.timer.Stop()
	flush := time.NewTicker(f.opts.FlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			f.flush()
			return nil
		case <-f.q.notify:
			for _, fn := range f.q.drain() {
				fn()
				if f.commitEach {
					f.commit()
				}
			}
		case <-f.timer.C:
			f.checkRetained()
		case <-flush.C:
			f.flush()
			f.sendOwed()
		}
		f.commit()
	}
}

// Receive hands the fleet a message from the broker. It never blocks and is
// safe for concurrent use; messages are processed in the order received.
// retained is the MQTT RETAIN flag: the message was stored by the broker
// before this subscription.
func (f *Fleet) Receive(topic string, payload []byte, retained bool) {
	f.q.push(func() { f.handle(topic, payload, retained) })
}

// LinkUp tells the fleet the link is connected and subscribed to Filters,
// and publishes through p from now on. retainedDelivered says every
// retained message has already been handed to Receive (true for the
// embedded broker); otherwise they are still coming.
func (f *Fleet) LinkUp(p Publisher, retainedDelivered bool) {
	f.q.push(func() { f.linkUp(p, retainedDelivered) })
}

// LinkDown tells the fleet the link is lost: Commands are owed until the
// next LinkUp.
func (f *Fleet) LinkDown(err error) {
	f.q.push(func() {
		f.log.Warn("broker link down: commands are kept until it is back", "error", err)
		f.pub = nil
		f.connected.Store(false)
		if f.waiting {
			f.waiting = false
			f.timer.Stop()
		}
	})
}

// Ready is closed once the retained state has been read.
func (f *Fleet) Ready() <-chan struct{} { return f.ready }

// IsReady reports whether the retained state has been read.
func (f *Fleet) IsReady() bool {
	select {
	case <-f.ready:
		return true
	default:
		return false
	}
}

// Devices returns every known device, sorted by id.
func (f *Fleet) Devices() []Device {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make([]Device, 0, len(f.view))
	for _, id := range slices.Sorted(maps.Keys(f.view)) {
		out = append(out, f.view[id])
	}
	return out
}

// Device returns one device.
func (f *Fleet) Device(id string) (Device, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	d, ok := f.view[id]
	return d, ok
}

// Status returns the fleet's health and counters.
func (f *Fleet) Status() Status {
	f.mu.RLock()
	n, owed := len(f.view), f.owed
	f.mu.RUnlock()
	return Status{
		Ready:         f.IsReady(),
		Connected:     f.connected.Load(),
		Devices:       n,
		Received:      f.received.Load(),
		Rejected:      f.rejected.Load(),
		PropsRejected: f.propsRejected.Load(),
		Published:     f.published.Load(),
		Owed:          owed,
	}
}

// Set is a remote user's write: it validates changes (property name to
// value, as JSON decodes them), waits until the fleet is ready (bounded by
// ctx), stamps the write, stores it and publishes the Command, retained,
// whether the device is online or not. If the broker link is down the
// Command is owed and sent when it is back; the write is accepted all the
// same (Device.Pending says so).
func (f *Fleet) Set(ctx context.Context, id string, changes map[string]any) (Device, error) {
	if !protocol.ValidID(id) || id == protocol.ControllerID {
		return Device{}, fmt.Errorf("%w %q", ErrUnknownDevice, id)
	}
	if len(changes) == 0 {
		return Device{}, fmt.Errorf("%w: no property to set", ErrInvalid)
	}
	for _, name := range slices.Sorted(maps.Keys(changes)) {
		if _, err := protocol.Normalize(name, changes[name]); err != nil {
			return Device{}, fmt.Errorf("%w: %v", ErrInvalid, err)
		}
	}
	select {
	case <-f.ready:
	case <-f.stopped:
		return Device{}, ErrStopped
	case <-ctx.Done():
		return Device{}, fmt.Errorf("%w: still reading the broker's retained messages (%v)", ErrNotReady, ctx.Err())
	}
	type result struct {
		d   Device
		err error
	}
	reply := make(chan result, 1)
	f.q.push(func() {
		d, err := f.set(id, changes)
		reply <- result{d, err}
	})
	select {
	case r := <-reply:
		return r.d, r.err
	case <-f.stopped:
		return Device{}, ErrStopped
	case <-ctx.Done():
		return Device{}, fmt.Errorf("set %s: %w", id, ctx.Err())
	}
}

// --- the Run goroutine from here on ---

func (f *Fleet) set(id string, changes map[string]any) (Device, error) {
	m, err := f.ctrl.Set(id, changes)
	if err != nil {
		if errors.Is(err, ErrUnknownDevice) || errors.Is(err, ErrNotReady) {
			return Device{}, err
		}
		if errors.Is(err, ErrClockExhausted) {
			f.log.Error("remote write refused: the clock for this device is at its limit", "device", id, "error", err)
			return Device{}, fmt.Errorf("set %s: %w", id, err)
		}
		return Device{}, fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	f.log.Info("remote write", "device", id, "changes", changes, "vc", m.VC)
	f.send([]command{{id, m}})
	// The caller learns whether the write was stored: commit the batch now.
	if err := f.commit(); err != nil {
		return Device{}, err
	}
	d, _ := f.Device(id)
	return d, nil
}

type command struct {
	id string
	m  protocol.Message
}

// send queues cmds to be published when the batch is committed; their
// devices' records are marked owed and stored first.
func (f *Fleet) send(cmds []command) {
	for _, c := range cmds {
		f.record(c.id).Owed = true
		f.persist[c.id] = true
		f.pending = append(f.pending, c)
	}
}

// commit ends a batch: it stores every record the batch changed, with the
// Commands' devices marked owed, in one transaction, then publishes the
// Commands in the order they were made and clears the marks of those the
// broker took. Nothing is published if the store refused the write: a
// Command must never carry a clock that a crash could forget. A received
// Event's new state is stored here too, before any Command that depends
// on it; until then the broker still retains the Event.
func (f *Fleet) commit() error {
	if len(f.persist) == 0 && len(f.pending) == 0 {
		return nil
	}
	recs := make([]store.Device, 0, len(f.persist))
	for _, id := range slices.Sorted(maps.Keys(f.persist)) {
		rec := f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		recs = append(recs, *rec)
	}
	cmds := f.pending
	f.pending = nil
	clear(f.persist)
	if err := f.st.Put(recs...); err != nil {
		for _, r := range recs {
			f.dirty[r.ID] = true
		}
		if len(cmds) == 0 {
			f.log.Error("store the received state", "devices", len(recs), "error", err)
			return fmt.Errorf("store: %w", err)
		}
		f.log.Error("store refused the write: commands not published", "commands", len(cmds), "error", err)
		for _, c := range cmds {
			f.updateView(c.id)
		}
		return fmt.Errorf("persist before publish: %w", err)
	}
	for _, r := range recs {
		delete(f.dirty, r.ID)
	}
	if len(cmds) == 0 {
		return nil
	}
	if f.pub == nil {
		for _, c := range cmds {
			f.log.Info("broker link down: command owed", "device", c.id, "vc", c.m.VC)
			f.updateView(c.id)
		}
		return nil
	}
	// Every Command carries the device's whole state, so the outcome of
	// a device's last Command decides whether it still owes one.
	devices := map[string]bool{}
	for _, c := range cmds {
		f.recs[c.id].Owed = !f.publish(c)
		devices[c.id] = true
		f.updateView(c.id)
	}
	var sent []store.Device
	for _, id := range slices.Sorted(maps.Keys(devices)) {
		if rec := f.recs[id]; !rec.Owed {
			sent = append(sent, *rec)
		}
	}
	if err := f.st.Put(sent...); err != nil {
		// The owed marks stay on disk: after a restart these Commands go
		// out once more, which is harmless.
		f.log.Warn("store: clear owed marks", "error", err)
		for _, r := range sent {
			f.dirty[r.ID] = true
		}
	}
	return nil
}

func (f *Fleet) publish(c command) bool {
	payload, err := c.m.Encode()
	if err != nil {
		f.log.Error("encode command", "device", c.id, "error", err)
		return false
	}
	ctx, cancel := context.WithTimeout(f.ctx, f.opts.PublishTimeout)
	defer cancel()
	topic := protocol.Topic(f.root, c.id, protocol.KindCmd)
	if err := f.pub.Publish(ctx, topic, payload, 1, true); err != nil {
		f.log.Warn("publish command failed: owed until the link is back", "device", c.id, "vc", c.m.VC, "error", err)
		return false
	}
	f.published.Add(1)
	f.log.Debug("command published", "device", c.id, "vc", c.m.VC, "props", c.m.Props)
	return true
}

// sendOwed sends every owed Command again: a Send with the current clock
// and properties, which carries every write the lost one did.
func (f *Fleet) sendOwed() {
	if f.pub == nil || !f.ctrl.IsReady() {
		return
	}
	var cmds []command
	for _, id := range slices.Sorted(maps.Keys(f.recs)) {
		if f.recs[id].Owed {
			// Online is the controller's Send for a known device once
			// ready: a Command with its current clock and properties.
			if m := f.ctrl.Online(id); m != nil {
				cmds = append(cmds, command{id, *m})
			}
		}
	}
	if len(cmds) > 0 {
		f.log.Info("sending owed commands", "devices", len(cmds))
		f.send(cmds)
	}
}

func (f *Fleet) linkUp(p Publisher, retainedDelivered bool) {
	f.pub = p
	f.connected.Store(true)
	switch {
	case f.ctrl.IsReady():
		f.log.Info("broker link up")
		f.sendOwed()
	case retainedDelivered:
		f.becomeReady()
	default:
		f.log.Info("broker link up: reading retained messages")
		now := time.Now()
		f.waiting = true
		f.lastRet = now
		f.deadline = now.Add(f.opts.RetainedTimeout)
		f.timer.Reset(f.opts.QuietPeriod)
	}
}

// checkRetained runs when the quiet timer fires while waiting for an
// external broker's retained messages.
func (f *Fleet) checkRetained() {
	if !f.waiting {
		return
	}
	now := time.Now()
	quietAt := f.lastRet.Add(f.opts.QuietPeriod)
	if now.Before(quietAt) && now.Before(f.deadline) {
		f.timer.Reset(min(quietAt.Sub(now), f.deadline.Sub(now)))
		return
	}
	if !now.Before(f.deadline) {
		f.log.Warn("retained messages still arriving at the deadline: ready anyway", "timeout", f.opts.RetainedTimeout)
	}
	f.waiting = false
	f.becomeReady()
}

// becomeReady marks the retained state read, greets the devices seen
// online meanwhile and sends what is owed.
func (f *Fleet) becomeReady() {
	greet := f.ctrl.Ready()
	var cmds []command
	for _, id := range slices.Sorted(maps.Keys(greet)) {
		cmds = append(cmds, command{id, greet[id]})
	}
	for _, id := range slices.Sorted(maps.Keys(f.recs)) {
		if _, greeted := greet[id]; f.recs[id].Owed && !greeted {
			if m := f.ctrl.Online(id); m != nil {
				cmds = append(cmds, command{id, *m})
			}
		}
	}
	f.log.Info("retained state read: ready", "devices", len(f.recs), "greetings", len(greet), "commands", len(cmds))
	close(f.ready)
	f.send(cmds)
}

// handle processes one message from the broker.
func (f *Fleet) handle(topic string, payload []byte, retained bool) {
	f.received.Add(1)
	if f.waiting && retained {
		f.lastRet = time.Now()
	}
	id, kind, err := protocol.ParseTopic(f.root, topic)
	if err != nil {
		f.reject(topic, payload, err)
		return
	}
	if id == protocol.ControllerID {
		f.reject(topic, payload, errors.New("the device id is reserved for the controller"))
		return
	}
	switch kind {
	case protocol.KindEvent, protocol.KindCmd:
		m, issues, err := protocol.DecodeMessage(payload)
		if err != nil {
			f.reject(topic, payload, err)
			return
		}
		for _, is := range issues {
			if is.Unknown {
				f.log.Info("unknown property ignored", "topic", topic, "property", is.Name)
				continue
			}
			f.propsRejected.Add(1)
			f.log.Warn("property rejected", "topic", topic, "property", is.Name, "reason", is.Reason)
		}
		var out protocol.Outcome
		var resync *protocol.Message
		if kind == protocol.KindEvent {
			out, resync, err = f.ctrl.ReceiveEvent(id, m)
		} else {
			out, err = f.ctrl.ReceiveCommand(id, m)
		}
		if err != nil {
			f.reject(topic, payload, err)
			return
		}
		rec := f.record(id)
		if out.Duplicate {
			f.log.Debug("duplicate ignored", "topic", topic, "vc", m.VC, "retained", retained)
		} else {
			rec.Replica = f.ctrl.Replica(id)
			f.log.Info("message applied", "topic", topic, "retained", retained, "msg_vc", m.VC, "vc", rec.Replica.VC,
				"applied", out.Applied, "kept", out.Kept, "conflicts", out.Conflicts)
			f.persist[id] = true
		}
		if resync != nil {
			// The device had seen more of this controller than it remembers:
			// a Command from the merged clock carries the state across.
			f.log.Warn("controller clock was behind the device's view (lost store?): resending state", "device", id, "vc", resync.VC)
			f.send([]command{{id, *resync}})
		}
	case protocol.KindStatus:
		s, err := protocol.DecodeStatus(payload)
		if err != nil {
			f.reject(topic, payload, err)
			return
		}
		rec := f.record(id)
		if rec.Online != s.Online {
			f.log.Info("device status", "device", id, "online", s.Online, "retained", retained)
		}
		rec.Online = s.Online
		f.dirty[id] = true
		if s.Online {
			if g := f.ctrl.Online(id); g != nil {
				f.log.Info("greeting", "device", id, "vc", g.VC)
				f.send([]command{{id, *g}})
			}
		} else {
			f.ctrl.Offline(id)
		}
	case protocol.KindTelemetry:
		t, err := protocol.DecodeTelemetry(payload)
		if err != nil {
			f.reject(topic, payload, err)
			return
		}
		b, err := t.Encode()
		if err != nil {
			f.reject(topic, payload, err)
			return
		}
		f.ctrl.Seen(id)
		rec := f.record(id)
		rec.Telemetry = b
		rec.Reported = f.reported(id, rec.Reported, t.Alerts)
		f.dirty[id] = true
	}
	if !retained && kind != protocol.KindCmd {
		f.record(id).LastSeen = f.opts.Now().UTC()
		f.dirty[id] = true
	}
	f.updateView(id)
}

// RaiseAlert records a condition of device id that only the controller can
// see (see protocol.AlertCodes). It never blocks; a device not yet known is
// recorded. The first raise of a code is logged at ERROR.
func (f *Fleet) RaiseAlert(id, code, detail string) {
	f.q.push(func() {
		rec := f.record(id)
		i := slices.IndexFunc(rec.Raised, func(a protocol.Alert) bool { return a.Code == code })
		if i < 0 {
			f.log.Error("device alert raised", "device", id, "alert", code, "detail", detail)
			rec.Raised = append(rec.Raised, protocol.Alert{Code: code, Since: f.opts.Now().UTC(), Detail: detail})
			slices.SortFunc(rec.Raised, byCode)
		} else {
			rec.Raised[i].Detail = detail
		}
		f.dirty[id] = true
		f.updateView(id)
	})
}

// ClearAlert removes a condition RaiseAlert recorded.
func (f *Fleet) ClearAlert(id, code string) {
	f.q.push(func() {
		rec, ok := f.recs[id]
		if !ok {
			return
		}
		n := len(rec.Raised)
		rec.Raised = slices.DeleteFunc(rec.Raised, func(a protocol.Alert) bool { return a.Code == code })
		if len(rec.Raised) != n {
			f.log.Info("device alert cleared", "device", id, "alert", code)
			f.dirty[id] = true
			f.updateView(id)
		}
	})
}

// reported turns the codes a telemetry payload carries into alerts, each
// keeping the time the controller first saw it.
func (f *Fleet) reported(id string, old []protocol.Alert, codes []string) []protocol.Alert {
	var out []protocol.Alert
	for _, code := range codes {
		if slices.ContainsFunc(out, func(a protocol.Alert) bool { return a.Code == code }) {
			continue
		}
		i := slices.IndexFunc(old, func(a protocol.Alert) bool { return a.Code == code })
		if i >= 0 {
			out = append(out, old[i])
			continue
		}
		f.log.Warn("device reports an alert", "device", id, "alert", code)
		out = append(out, protocol.Alert{Code: code, Since: f.opts.Now().UTC(), Detail: "reported by the device"})
	}
	slices.SortFunc(out, byCode)
	return out
}

func byCode(a, b protocol.Alert) int { return strings.Compare(a.Code, b.Code) }

// mergeAlerts is what readers see: both lists by code, the earlier since
// where both have a code. Never nil.
func mergeAlerts(reported, raised []protocol.Alert) []protocol.Alert {
	out := make([]protocol.Alert, 0, len(reported)+len(raised))
	out = append(out, raised...)
	for _, a := range reported {
		i := slices.IndexFunc(out, func(b protocol.Alert) bool { return b.Code == a.Code })
		switch {
		case i < 0:
			out = append(out, a)
		case a.Since.Before(out[i].Since):
			out[i].Since = a.Since
		}
	}
	slices.SortFunc(out, byCode)
	return out
}

func (f *Fleet) reject(topic string, payload []byte, err error) {
	f.rejected.Add(1)
	f.log.Warn("message rejected", "topic", topic, "bytes", len(payload), "reason", err)
}

// record returns the device's record, creating it (and the controller's
// replica) for a device not seen before.
func (f *Fleet) record(id string) *store.Device {
	rec, ok := f.recs[id]
	if !ok {
		f.ctrl.Seen(id)
		rec = &store.Device{ID: id, Replica: f.ctrl.Replica(id)}
		f.recs[id] = rec
		f.dirty[id] = true
		f.log.Info("new device", "device", id)
	}
	return rec
}

// flush writes the records changed since the last flush.
func (f *Fleet) flush() {
	if len(f.dirty) == 0 {
		return
	}
	recs := make([]store.Device, 0, len(f.dirty))
	for _, id := range slices.Sorted(maps.Keys(f.dirty)) {
		rec := f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		recs = append(recs, *rec)
	}
	if err := f.st.Put(recs...); err != nil {
		f.log.Error("store: flush", "devices", len(recs), "error", err)
		return
	}
	clear(f.dirty)
}

// updateView publishes the device's current state to readers.
func (f *Fleet) updateView(id string) {
	rec := f.recs[id]
	r := f.ctrl.Replica(id)
	if rec == nil || r == nil {
		return
	}
	d := Device{ID: id, Online: rec.Online, VC: r.VC, Props: r.Props, Telemetry: rec.Telemetry, Pending: rec.Owed,
		Alerts: mergeAlerts(rec.Reported, rec.Raised)}
	if d.Props == nil {
		d.Props = protocol.Props{}
	}
	if !rec.LastSeen.IsZero() {
		t := rec.LastSeen
		d.LastSeen = &t
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.view[id]; ok && old.Pending {
		f.owed--
	}
	if d.Pending {
		f.owed++
	}
	f.view[id] = d
}
