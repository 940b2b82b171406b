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
	"sync"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/workq"
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
	// ErrStore: the store refused the write (out of reach, a full disk):
	// nothing was stored or published. With PostgreSQL the write is
	// dropped; with the single controller's bbolt store it stays in
	// memory and goes out once the store takes it. Sending the same write
	// again is harmless either way.
	ErrStore = errors.New("the store refused the write")
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

// Store is what the fleet needs of a database: the bbolt file in the data
// directory (*store.Store, the default) or PostgreSQL (store/pgstore).
type Store interface {
	// Load returns every record, sorted by id; New calls it once.
	Load() ([]store.Device, error)
	// Put writes records in one transaction, all or none, durably
	// before it returns: the fleet publishes a Command only after the
	// replica it carries is stored.
	Put(devs ...store.Device) error
	// Delete removes the records of ids in one transaction; an id
	// without a record is no error.
	Delete(ids ...string) error
	// Path says where the records are, for the log (no secrets).
	Path() string
}

// Options configure a Fleet. Store is required.
type Options struct {
	// Store holds the replicas; New loads it, and the fleet writes it.
	Store Store
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
	// Now is the fleet's clock (time.Now by default): it stamps last_seen
	// and alerts, and times the wait for retained messages.
	Now func() time.Time
	// Telemetry, if set, is told of every live telemetry message accepted
	// (not retained ones: those were told when they were live).
	Telemetry TelemetrySink
	// Meter, if set, hears how long commits and resyncs take (meter.go).
	Meter Meter
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
	// Pending is true until the broker has taken the device's latest
	// Command: while it is on its way, while the controller's own link is
	// down, or after the broker refused it (sent again at the next flush).
	Pending bool `json:"pending"`
	// Alerts are the device's conditions that need a person: those its
	// telemetry reports and those the controller sees (duplicate_identity,
	// tls_refused), sorted by code; [] when none.
	Alerts []protocol.Alert `json:"alerts"`
	// CertExpires is when the device's certificate ends, as its latest
	// telemetry reports it; null until it does.
	CertExpires *time.Time `json:"cert_expires"`
	// Firmware is the firmware version the device last reported, absent
	// if it never did (an older firmware).
	Firmware string `json:"firmware,omitempty"`
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
	// Instance is set when several controller instances share the
	// store (shard.go).
	Instance *InstanceStatus `json:"instance,omitempty"`
}

// Fleet is the controller's protocol engine. Create it with New, run it
// with Run, and attach a broker link.
type Fleet struct {
	opts Options
	root string
	log  *slog.Logger
	st   Store

	q       *workq.Queue[func(context.Context)] // work for Run, in order
	ready   chan struct{}                       // closed when the retained state has been read
	stopped chan struct{}                       // closed when Run returns
	running atomic.Bool

	connected atomic.Bool
	count     counters

	mu       sync.RWMutex
	view     map[string]Device // what readers see, updated at the end of each batch
	owed     int
	watchers map[*Watcher]bool

	// Owned by the Run goroutine.
	ctrl  *protocol.Controller
	recs  map[string]*store.Device
	dirty map[string]bool // records changed since the last flush
	pub   Publisher       // nil while the link is down
	batch batch
	out   outbox // Commands stored and not yet taken by the broker
	wait  retainedWait

	// retry writes again soon what the store refused (storeRetry).
	retry storeRetry

	// resyncs are the devices greeted and not yet back in sync (meter.go).
	resyncs map[string]resyncWait

	// sh is set when several instances share the store (shard.go).
	sh *shard
}

// counters are the fleet's message counts, read by Status.
type counters struct {
	received, rejected, propsRejected, published atomic.Uint64

	by breakdown // by kind and reason, read by Counts
}

// batch is the work queued since the loop last woke, done in one go: what
// it changed is stored in one transaction (one fsync), then shown to
// readers, and its Commands handed to the outbox, in order. A fleet coming
// back after an outage sends a burst; a transaction per message would make
// the last device of the burst wait for every fsync before it.
type batch struct {
	persist map[string]bool // records to store before the batch's Commands go out
	pending []command       // the batch's Commands, in the order made
	sends   map[string]bool // devices with a Command in pending
	touched map[string]bool // devices whose view the batch changed
	done    []func(error)   // callers waiting for the batch's commit (Set), told its outcome
	idle    []func()        // whenIdle's callers whose device's publishes are over
}

// retainedWait is the wait for an external broker's retained messages
// (see the package doc).
type retainedWait struct {
	waiting  bool
	lastRet  time.Time // when the last retained message (or the link) came
	deadline time.Time // when waiting gives up
	timer    *time.Timer
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
	if opts.Meter == nil {
		opts.Meter = nopMeter{}
	}
	devs, err := opts.Store.Load()
	if err != nil {
		return nil, fmt.Errorf("fleet: %w", err)
	}
	replicas := make(map[string]*protocol.Replica, len(devs))
	f := &Fleet{
		opts:     opts,
		root:     opts.TopicRoot,
		log:      opts.Logger,
		st:       opts.Store,
		q:        workq.New[func(context.Context)](),
		ready:    make(chan struct{}),
		stopped:  make(chan struct{}),
		view:     map[string]Device{},
		watchers: map[*Watcher]bool{},
		recs:     map[string]*store.Device{},
		dirty:    map[string]bool{},
		batch:    batch{persist: map[string]bool{}, sends: map[string]bool{}, touched: map[string]bool{}},
		out:      newOutbox(),
		resyncs:  map[string]resyncWait{},
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

// Filters are the subscriptions a link must make for the fleet: every
// device's event, status and telemetry, and the controller's own commands.
func (f *Fleet) Filters() []string {
	if f.sh != nil {
		return f.sharedFilters()
	}
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
	// Publishes in flight end with ctx; none outlives Run.
	defer f.out.running.Wait()
	f.wait.timer = time.NewTimer(time.Hour)
	f.wait.timer.Stop()
	f.retry.timer = time.NewTimer(time.Hour)
	f.retry.timer.Stop()
	flush := time.NewTicker(f.opts.FlushInterval)
	defer flush.Stop()
	for {
		select {
		case <-ctx.Done():
			f.flush()
			return nil
		case <-f.q.Wake():
			for _, fn := range f.q.Drain() {
				fn(ctx)
			}
		case <-f.wait.timer.C:
			f.checkRetained()
		case <-flush.C:
			f.flush()
			f.sendOwed()
		case <-f.retry.timer.C:
			f.retry.armed = false
			f.flush()
			f.sendOwed()
		}
		err := f.commit(ctx)
		f.armRetry()
		for _, done := range f.batch.done {
			done(err)
		}
		f.batch.done = nil
		for _, fn := range f.batch.idle {
			fn()
		}
		f.batch.idle = nil
		if f.ctrl.IsReady() && !f.IsReady() {
			// After the commit, so a reader woken by Ready sees every
			// device the retained messages brought in.
			close(f.ready)
		}
	}
}

// Receive hands the fleet a message from the broker. It never blocks and is
// safe for concurrent use; messages are processed in the order received.
// retained is the MQTT RETAIN flag: the message was stored by the broker
// before this subscription.
func (f *Fleet) Receive(topic string, payload []byte, retained bool) {
	f.q.Push(func(context.Context) { f.handle(topic, payload, retained) })
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
		Received:      f.count.received.Load(),
		Rejected:      f.count.rejected.Load(),
		PropsRejected: f.count.propsRejected.Load(),
		Published:     f.count.published.Load(),
		Owed:          owed,
		Instance:      f.instanceStatus(),
	}
}

// Set is a remote user's write: it validates changes (property name to
// value, as JSON decodes them), waits until the fleet is ready (bounded by
// ctx), stamps the write, stores it and publishes the Command, retained,
// whether the device is online or not. If the broker link is down the
// Command is owed and sent when it is back; the write is accepted all the
// same (Device.Pending says so).
func (f *Fleet) Set(ctx context.Context, id string, changes map[string]any) (Device, error) {
	if protocol.CheckDeviceID(id) != nil {
		return Device{}, fmt.Errorf("%w %q", ErrUnknownDevice, id)
	}
	if len(changes) == 0 {
		return Device{}, fmt.Errorf("%w: no property to set", ErrInvalid)
	}
	for _, name := range slices.Sorted(maps.Keys(changes)) {
		if _, err := protocol.Normalize(name, changes[name]); err != nil {
			return Device{}, fmt.Errorf("%w: %w", ErrInvalid, err)
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
	f.q.Push(func(ctx context.Context) {
		// The caller is answered once the broker has the write's
		// Command (or it is owed: Device.Pending), with the device as
		// it is then.
		answer := func() {
			d, _ := f.Device(id)
			reply <- result{d, nil}
		}
		d, err := f.set(ctx, id, changes)
		switch {
		case err != nil:
			reply <- result{Device{}, err}
			return
		case d != nil: // stored already (setShared)
			f.whenIdle(id, answer)
			return
		}
		// The write is stored with the other writes and Events of the
		// batch it is part of (one transaction for all of them, not one
		// each).
		f.batch.done = append(f.batch.done, func(err error) {
			if err != nil {
				reply <- result{Device{}, err}
				return
			}
			f.whenIdle(id, answer)
		})
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

// set applies a remote write and queues its Command in the batch; the
// batch's commit stores and publishes it. Shared by several instances, the
// write is stored and published at once (setShared) and done is nil.
func (f *Fleet) set(ctx context.Context, id string, changes map[string]any) (done *Device, err error) {
	if f.sh != nil {
		d, err := f.setShared(ctx, id, changes)
		return &d, err
	}
	m, err := f.ctrl.Set(id, changes)
	if err != nil {
		if errors.Is(err, ErrUnknownDevice) || errors.Is(err, ErrNotReady) {
			return nil, err
		}
		if errors.Is(err, ErrClockExhausted) {
			f.log.Error("remote write refused: the clock for this device is at its limit", "device", id, "error", err)
			return nil, fmt.Errorf("set %s: %w", id, err)
		}
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	f.log.Info("remote write", "device", id, "changes", changes, "vc", m.VC)
	f.send([]command{{id, m}})
	return nil, nil
}

// handle processes one message from the broker.
func (f *Fleet) handle(topic string, payload []byte, retained bool) {
	if len(payload) == 0 {
		// A retained message being removed (Delete does that): nothing
		// to apply, and no device to make of it.
		f.log.Debug("empty message ignored", "topic", topic, "retained", retained)
		return
	}
	f.count.received.Add(1)
	f.count.by.receive(topic)
	if f.wait.waiting && retained {
		f.wait.lastRet = f.opts.Now()
	}
	id, kind, err := protocol.ParseTopic(f.root, topic)
	if err != nil {
		f.reject(topic, payload, err)
		return
	}
	// "controller" and every "controller-<name>" are the controller's
	// own certificates, never a device, whatever a broker let through.
	if err := protocol.CheckDeviceID(id); err != nil {
		f.reject(topic, payload, err)
		return
	}
	if !f.accept(id) {
		return // another instance's device
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
			f.count.propsRejected.Add(1)
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
		if kind == protocol.KindEvent && !retained {
			f.resyncEvent(id, m)
		}
		rec := f.record(id)
		if out.Duplicate {
			f.log.Debug("duplicate ignored", "topic", topic, "vc", m.VC, "retained", retained)
		} else {
			rec.Replica = f.ctrl.Replica(id)
			f.log.Info("message applied", "topic", topic, "retained", retained, "msg_vc", m.VC, "vc", rec.Replica.VC,
				"applied", out.Applied, "kept", out.Kept, "conflicts", out.Conflicts)
			f.batch.persist[id] = true
			if kind == protocol.KindEvent {
				f.received(id, m)
			}
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
		if s.Firmware != "" {
			rec.Firmware = s.Firmware
		}
		f.dirty[id] = true
		if s.Online {
			if g := f.ctrl.Online(id); g != nil {
				f.log.Info("greeting", "device", id, "vc", g.VC)
				f.send([]command{{id, *g}})
				if !retained {
					f.resyncStart(id, *g)
				}
			}
		} else {
			f.ctrl.Offline(id)
			delete(f.resyncs, id)
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
		if t.Firmware != "" {
			rec.Firmware = t.Firmware
		}
		rec.Reported = f.reported(id, rec.Reported, t.Alerts)
		f.dirty[id] = true
		if f.opts.Telemetry != nil && !retained {
			f.opts.Telemetry.Telemetry(id, f.opts.Now().UTC(), t, f.ctrl.Replica(id).Props)
		}
	}
	if !retained && kind != protocol.KindCmd {
		f.record(id).LastSeen = f.opts.Now().UTC()
		f.dirty[id] = true
	}
	f.touch(id)
}

func (f *Fleet) reject(topic string, payload []byte, err error) {
	f.count.rejected.Add(1)
	f.count.by.reject(f.root, topic, payload, err)
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

// touch marks the device's view as changed by the batch: readers see it
// when the batch is committed, so they never see a state half-way through
// (a greeting owed that is about to be sent), and never one that was not
// stored.
func (f *Fleet) touch(id string) { f.batch.touched[id] = true }

// showTouched publishes the views of the devices the batch changed.
func (f *Fleet) showTouched() {
	for id := range f.batch.touched {
		f.updateView(id)
	}
	clear(f.batch.touched)
}

// updateView publishes the device's current state to readers.
func (f *Fleet) updateView(id string) {
	rec := f.recs[id]
	r := f.ctrl.Replica(id)
	if rec == nil || r == nil {
		return
	}
	d := Device{ID: id, Online: rec.Online, VC: r.VC, Props: r.Props, Telemetry: rec.Telemetry, Pending: rec.Owed,
		Alerts: mergeAlerts(rec.Reported, rec.Raised), Firmware: rec.Firmware}
	if d.Props == nil {
		d.Props = protocol.Props{}
	}
	if !rec.LastSeen.IsZero() {
		t := rec.LastSeen
		d.LastSeen = &t
	}
	d.CertExpires = certExpires(rec.Telemetry)
	f.mu.Lock()
	defer f.mu.Unlock()
	if old, ok := f.view[id]; ok && old.Pending {
		f.owed--
	}
	if d.Pending {
		f.owed++
	}
	f.view[id] = d
	f.notify(id)
}
