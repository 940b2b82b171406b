// Package agent is the thermostat's sync glue: it owns the device side of
// the protocol (protocol.Device), persists its state before every message
// that depends on it, talks to the broker through transport, feeds the
// control loop its settings, and turns local and button changes into
// device events.
//
// One goroutine (Run) owns the protocol state and the state store, so no
// two changes interleave; broker messages, connection events, local sets and
// button bursts reach it as queued operations, in order. A second goroutine
// publishes what Run decided, in the order it decided it, so a broker that
// is slow to acknowledge never delays a local change, and an older Event
// can never land on the broker after a newer one (the broker retains the
// last one it got, and a rejoining device trusts it).
//
// A state that cannot be saved (a full or read-only disk) never stops the
// agent, and so never the heating: whatever needed saving is undone, the
// device goes on with its last saved state (the control loop with its
// settings, frost protection included), a local change is refused with
// the reason, nothing that depends on the unsaved state is sent, and the
// storage_error alert is raised. Saving is tried again, and once it works
// the device catches up with what it refused (see resync).
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/internal/alert"
	"github.com/thermofleet/thermo/internal/workq"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
	"periph.io/x/conn/v3/physic"
)

// Defaults of Config.
const (
	DefaultTelemetryInterval = 30 * time.Second
	DefaultSyncTimeout       = 10 * time.Second
	DefaultSaveRetry         = 30 * time.Second
)

// firstSaveRetry is the wait before the first new attempt to save a state
// that could not be saved; the waits double up to Config.SaveRetry.
const firstSaveRetry = time.Second

// saveErrorLogEvery bounds the ERROR lines about a state that cannot be
// saved: a full disk must not fill the journal too. Each line counts the
// failures since the previous one.
const saveErrorLogEvery = time.Minute

// ErrNotSaved is wrapped by the error of a change refused because the
// state could not be saved; the error wraps the store's error too (such as
// syscall.ENOSPC or syscall.EROFS).
var ErrNotSaved = errors.New("refused: the thermostat cannot save its state, and keeps running on its last saved settings")

// Conn is the broker connection the agent uses; *transport.Client is one.
// Subscriptions are kept across reconnects by the connection itself.
type Conn interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	Subscribe(filter string, qos byte) error
	Unsubscribe(filter string) error
	Connected() bool
}

// Store persists the device state; *state.Store is one. Save must be
// atomic and durable when it returns, and a Save that fails must leave
// the stored state as it was: the agent then rolls back to it.
type Store interface {
	Save(protocol.DeviceState) error
}

// Loop is the control loop as the agent sees it; *control.Loop is one.
type Loop interface {
	SetSettings(control.Settings) error
	Snapshot() control.Snapshot
}

// Config configures an Agent. ID, Store and Loop are required.
type Config struct {
	// ID is the device id: the Common Name of the device certificate.
	ID string
	// Root is the topic root, protocol.DefaultRoot when empty.
	Root              string
	Store             Store
	Loop              Loop
	TelemetryInterval time.Duration // DefaultTelemetryInterval when 0
	SyncTimeout       time.Duration // DefaultSyncTimeout when 0
	// SaveRetry is the longest wait between attempts to save a state that
	// could not be saved (DefaultSaveRetry when 0). The attempts start a
	// second apart and the waits double, so a disk that has room again a
	// moment later is noticed at once, and one that stays full costs one
	// write attempt every SaveRetry.
	SaveRetry time.Duration
	// Clock drives the telemetry interval, the sync timeout, the save
	// retries and the rate of save error lines; the wall clock when nil.
	Clock hal.Clock
	// FirstValues are the values of properties (presets, schedule) the
	// device holds until a write replaces them: a first boot starts with
	// them, and a device that never held one of them gains it, with the
	// zero stamp either way.
	FirstValues map[string]any
	// ScheduleClock times the schedule's entries: the board's clock, which
	// runs fast on a simulated board (--sim-speed), so a week of program
	// runs in minutes; Clock when nil.
	ScheduleClock hal.Clock
	// Zone is the board's own time zone, for a schedule without tz;
	// time.Local when nil.
	Zone *time.Location
	// CertExpiry, when set, is when the device's certificate in use ends:
	// reported in telemetry (cert_expires) and status. It changes when the
	// certificate is renewed.
	CertExpiry func() time.Time
	// Logger gets the agent's lines, marked component=agent; the caller
	// names the device on it (the runner does, for every part), so each
	// line carries the id once.
	Logger *slog.Logger
	// Firmware is the running firmware's version, reported in the online
	// status and in telemetry; "" reports none.
	Firmware string
}

// Counters count what happened to incoming messages since start.
type Counters struct {
	Received      uint64 `json:"received"`       // messages handed to the agent
	Rejected      uint64 `json:"rejected"`       // rejected whole (bad payload, wrong topic): nothing changed
	RejectedProps uint64 `json:"rejected_props"` // properties rejected alone in accepted messages
	Duplicates    uint64 `json:"duplicates"`     // clocked messages already seen
	Applied       uint64 `json:"applied"`        // commands that changed a property
	Discarded     uint64 `json:"discarded"`      // commands whose every value lost to newer or concurrent local writes
	EventsSent    uint64 `json:"events_sent"`    // events acknowledged by the broker
}

// Agent is the sync side of one thermostat.
type Agent struct {
	cfg   Config
	log   *slog.Logger
	clock hal.Clock
	id    string
	root  string

	// Owned by the Run goroutine.
	dev *protocol.Device
	// saved is what a restart would resume from, and what an operation
	// whose state cannot be saved is rolled back to. On a first boot
	// whose state was never saved, it is the fresh state: a restart would
	// start from that too.
	saved     protocol.DeviceState
	lastSaved []byte // saved as JSON; nil while nothing is on disk
	storage   storageState
	sched     scheduler
	syncTimer hal.Timer
	conn      Conn

	ops     *workq.Queue[func()] // operations for Run, in order; push never blocks
	out     outbox
	stopped chan struct{} // closed when Run returns

	// view is a copy of what Status reports, updated by Run after each
	// operation, so Status never waits for Run.
	viewMu sync.Mutex
	view   view

	// alerts are the device's conditions that need a person; telemetry
	// and Status carry them.
	alerts *alert.Set

	connected atomic.Bool
	counters  struct {
		received, rejected, rejectedProps, duplicates, applied, discarded, eventsSent atomic.Uint64

		saves, saveFailures atomic.Uint64 // state writes, for Saves
	}
}

// storageState follows a state that cannot be saved, on the Run
// goroutine.
type storageState struct {
	failing  bool
	since    time.Time // of the first failure of this spell
	retry    hal.Timer // the next attempt, while failing
	retries  int       // attempts by the retry timer in this spell
	failures int       // failed saves not yet counted in an ERROR line
	lastLog  time.Time // of the last ERROR line
}

type view struct {
	props     protocol.Props
	pending   map[string]any
	effective map[string]any
	vc        protocol.Clock
	rejoining bool
	connected bool
}

// New returns an agent resuming from stored, or, when stored is nil,
// starting from nothing (a first boot or a wiped state directory): it then
// rejoins as PROTOCOL.md describes, with control.DefaultSettings until it
// learns better. The first-boot state is saved at once, so a crash during
// the rejoin resumes it. If it cannot be saved, the agent still starts (the
// thermostat heats on the defaults), raises storage_error, and neither
// applies nor sends anything until the state can be saved.
func New(cfg Config, stored *protocol.DeviceState) (*Agent, error) {
	if err := protocol.CheckDeviceID(cfg.ID); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.Root == "" {
		cfg.Root = protocol.DefaultRoot
	}
	if err := protocol.CheckRoot(cfg.Root); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if cfg.Store == nil || cfg.Loop == nil {
		return nil, errors.New("agent: a store and a control loop are required")
	}
	if cfg.TelemetryInterval <= 0 {
		cfg.TelemetryInterval = DefaultTelemetryInterval
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.SaveRetry <= 0 {
		cfg.SaveRetry = DefaultSaveRetry
	}
	if cfg.Clock == nil {
		cfg.Clock = hal.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ScheduleClock == nil {
		cfg.ScheduleClock = cfg.Clock
	}
	if cfg.Zone == nil {
		cfg.Zone = time.Local
	}
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "agent"),
		clock:   cfg.Clock,
		id:      cfg.ID,
		root:    cfg.Root,
		ops:     workq.New[func()](),
		out:     newOutbox(),
		stopped: make(chan struct{}),
		alerts:  alert.New(cfg.Clock.Now),
		sched:   scheduler{clock: cfg.ScheduleClock, zone: cfg.Zone},
	}
	if stored == nil {
		d := control.DefaultSettings
		first := map[string]any{
			protocol.PropSetpoint: d.SetpointC,
			protocol.PropMode:     d.Mode,
		}
		maps.Copy(first, cfg.FirstValues)
		dev, err := protocol.NewDevice(first)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.dev = dev
		a.log.Warn("no stored state: rejoining; no event is sent until the device has caught up",
			"sync_timeout", cfg.SyncTimeout)
	} else {
		if len(cfg.FirstValues) > 0 {
			st, err := withFirstValues(*stored, cfg.FirstValues)
			if err != nil {
				return nil, fmt.Errorf("agent: %w", err)
			}
			stored = &st
		}
		a.dev = protocol.RestoreDevice(*stored)
		a.lastSaved, _ = json.Marshal(a.dev.State())
		if a.dev.Rejoining() {
			a.log.Warn("resuming an unfinished rejoin")
		}
	}
	a.saved = a.dev.State()
	// A failure is reported (the alert, a log line) and retried by Run;
	// there is nothing to roll back.
	_ = a.persist()
	// Registered only now: the control loop may not exist before New
	// returns, and the first save's alert goes out with the first
	// telemetry anyway. From now on a new or cleared alert goes out at
	// once, not at the next interval.
	a.alerts.OnChange(func() { a.queueTelemetry(a.cfg.Loop.Snapshot()) })
	a.updateView()
	return a, nil
}

// withFirstValues adds to stored state the first values of the properties
// it has never held (the configuration's presets and schedule), with the
// zero stamp, as a first boot has them: any write, from either side,
// supersedes them.
func withFirstValues(st protocol.DeviceState, first map[string]any) (protocol.DeviceState, error) {
	st.Replica = st.Replica.Clone()
	for name, v := range first {
		if _, ok := st.Replica.Props[name]; ok {
			continue
		}
		norm, err := protocol.Normalize(name, v)
		if err != nil {
			return st, err
		}
		st.Replica.Props[name] = protocol.Prop{Val: norm}
	}
	return st, nil
}

// Settings returns the settings the thermostat should start with: the
// effective properties of the stored state.
func (a *Agent) Settings() control.Settings {
	a.viewMu.Lock()
	defer a.viewMu.Unlock()
	return settingsOf(a.view.effective)
}

func settingsOf(eff map[string]any) control.Settings {
	s := control.DefaultSettings
	if v, ok := eff[protocol.PropSetpoint].(float64); ok {
		s.SetpointC = v
	}
	if v, ok := eff[protocol.PropMode].(string); ok {
		s.Mode = v
	}
	return s
}

// Topic returns the device's topic of kind k.
func (a *Agent) Topic(k protocol.Kind) string { return protocol.Topic(a.root, a.id, k) }

// Will is the MQTT will to register with the broker: status offline.
func (a *Agent) Will() *transport.Message {
	return &transport.Message{Topic: a.Topic(protocol.KindStatus), Payload: protocol.Status{Online: false}.Encode(), QoS: 1, Retained: true}
}

// Farewell is what to publish before a clean disconnect, when the broker
// sends no will: the same status offline.
func (a *Agent) Farewell() *transport.Message { return a.Will() }

// Run owns the protocol state until ctx is done. It subscribes conn to the
// device's cmd topic (and its own event topic while rejoining), and
// publishes on conn. It returns nil when ctx is done, and nothing else
// stops it: a state that cannot be saved is reported, retried and caught
// up with (see the package comment), because stopping would leave the
// heating off for as long as the disk stays full.
func (a *Agent) Run(ctx context.Context, conn Conn) error {
	a.conn = conn
	defer close(a.stopped)
	// The connection keeps these across reconnects; one that fails now is
	// made again by the next connect.
	filters := []string{a.Topic(protocol.KindCmd)}
	if a.dev.Rejoining() {
		filters = append(filters, a.Topic(protocol.KindEvent))
	}
	for _, f := range filters {
		if err := conn.Subscribe(f, 1); err != nil {
			a.log.Warn("subscribe failed; retried on the next connect", "filter", f, "err", err)
		}
	}
	pubCtx, stopPub := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); a.publishLoop(pubCtx) }()
	defer wg.Wait()
	defer stopPub()

	telemetry := a.clock.NewTimer(a.cfg.TelemetryInterval)
	defer func() { telemetry.Stop() }()
	for {
		// After everything the agent does, the schedule may have an entry
		// to apply (see checkSchedule).
		a.checkSchedule()
		var syncC, retryC, schedC <-chan time.Time
		if a.syncTimer != nil {
			syncC = a.syncTimer.C()
		}
		if a.storage.retry != nil {
			retryC = a.storage.retry.C()
		}
		if a.sched.timer != nil {
			schedC = a.sched.timer.C()
		}
		select {
		case <-ctx.Done():
			a.ops.Close()
			for _, t := range []hal.Timer{a.syncTimer, a.storage.retry} {
				if t != nil {
					t.Stop()
				}
			}
			a.sched.stop()
			return nil
		case <-schedC:
			a.sched.timer = nil
		case <-a.ops.Wake():
			for _, op := range a.ops.Drain() {
				op()
			}
		case <-telemetry.C():
			telemetry = a.clock.NewTimer(a.cfg.TelemetryInterval)
			a.queueTelemetry(a.cfg.Loop.Snapshot())
		case <-syncC:
			a.syncTimer = nil
			if a.dev.Rejoining() {
				a.log.Warn("rejoin: nothing heard from the controller or the broker in time; resuming with what the device has",
					"sync_timeout", a.cfg.SyncTimeout)
				if err := a.after(a.dev.SyncTimeout()); err != nil {
					a.log.Warn("rejoin: the state cannot be saved, so the device keeps waiting; the wait starts again once it can", "err", err)
				}
			}
		case <-retryC:
			a.retrySave()
		}
	}
}

// errStopped is returned to callers of an agent whose Run has returned.
var errStopped = errors.New("agent stopped")

// do runs f on the Run goroutine and waits for it.
func (a *Agent) do(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	if !a.ops.Push(func() { done <- f() }) {
		return errStopped
	}
	select {
	case err := <-done:
		return err
	case <-a.stopped:
		select {
		case err := <-done:
			return err
		default:
		}
		return errStopped
	case <-ctx.Done():
		return ctx.Err()
	}
}

// persist saves the state if it changed since the last save. If the save
// fails it reports the fault and returns an error wrapping ErrNotSaved; the
// caller must then undo what it did (rollback), since nothing that is not
// saved may be sent or kept.
func (a *Agent) persist() error {
	st := a.dev.State()
	b, err := json.Marshal(st)
	if err != nil {
		return a.saveFailed(fmt.Errorf("encode state: %w", err))
	}
	if a.lastSaved != nil && bytes.Equal(b, a.lastSaved) {
		return nil
	}
	return a.save(st, b)
}

// save writes st, which b encodes, and keeps it as the state to roll back
// to.
func (a *Agent) save(st protocol.DeviceState, b []byte) error {
	if err := a.cfg.Store.Save(st); err != nil {
		return a.saveFailed(err)
	}
	a.counters.saves.Add(1)
	a.saved, a.lastSaved = st, b
	a.saveWorks()
	return nil
}

// saveFailed reports a failed save: the storage_error alert with the
// error, an ERROR line at most once a minute (counting the failures since
// the previous one), and a retry on the agent's clock, so the thermostat
// resumes by itself once the disk has room. It returns err wrapped in
// ErrNotSaved.
func (a *Agent) saveFailed(err error) error {
	a.counters.saveFailures.Add(1)
	now := a.clock.Now()
	st := &a.storage
	if !st.failing {
		st.failing, st.since, st.retries = true, now, 0
	}
	st.failures++
	a.alerts.Raise(protocol.AlertStorageError, err.Error())
	if st.lastLog.IsZero() || now.Sub(st.lastLog) >= saveErrorLogEvery {
		a.log.Error("cannot save the state: changes are refused and nothing that depends on them is sent; the thermostat keeps running on its last saved settings and tries again",
			"err", err, "failures", st.failures, "failing_since", st.since, "retry_every", a.cfg.SaveRetry)
		st.lastLog, st.failures = now, 0
	}
	if st.retry == nil {
		st.retry = a.clock.NewTimer(min(firstSaveRetry<<min(st.retries, 16), a.cfg.SaveRetry))
	}
	return fmt.Errorf("%w: %w", ErrNotSaved, err)
}

// saveWorks ends a spell of failed saves: the alert is cleared and the
// device catches up with what it refused meanwhile (resync, queued after
// the operation in progress).
func (a *Agent) saveWorks() {
	st := &a.storage
	if !st.failing {
		return
	}
	a.log.Info("the state is saved again: changes are accepted; catching up with what was refused",
		"failing_since", st.since, "failures_not_logged", st.failures)
	if st.retry != nil {
		st.retry.Stop()
	}
	*st = storageState{lastLog: st.lastLog}
	a.alerts.Clear(protocol.AlertStorageError)
	a.ops.Push(a.resync)
}

// retrySave is the retry timer's attempt: it saves the device's state,
// which while saves fail is the last saved one (or, on a first boot, the
// fresh one), even though it did not change: the point is to learn whether
// the disk takes it now.
func (a *Agent) retrySave() {
	a.storage.retry = nil
	a.storage.retries++
	st := a.dev.State()
	b, err := json.Marshal(st)
	if err != nil {
		_ = a.saveFailed(fmt.Errorf("encode state: %w", err))
		return
	}
	_ = a.save(st, b)
}

// rollback undoes what the operation in progress did to the device once
// its state could not be saved. The device, the status view and the
// control loop return to the last saved state (undoing a button change the
// loop made by itself too), so the thermostat runs on what a restart would
// resume from, and the device stays online: its next local write is still
// sent at once.
func (a *Agent) rollback() {
	a.dev.Rollback(a.saved)
	a.updateView()
	eff := settingsOf(a.dev.Effective())
	if err := a.cfg.Loop.SetSettings(eff); err != nil {
		a.log.Error("the control loop refused the saved settings", "settings", eff, "err", err)
	}
}

// resync catches up once the state can be saved again. What was refused
// meanwhile was not applied, so the device announces its state again (an
// Event, as on a connect: the one a failed connect could not send) and
// subscribes again to its cmd topic (and its own event topic while
// rejoining), for which the broker delivers the retained Command (and
// Event) once more. Offline it does nothing: the next connect does the
// same.
func (a *Agent) resync() {
	if !a.connected.Load() || a.storage.failing {
		return
	}
	m := a.dev.Connect()
	if a.dev.Rejoining() && a.syncTimer == nil {
		a.syncTimer = a.clock.NewTimer(a.cfg.SyncTimeout)
	}
	if err := a.after(m); err != nil {
		return // failing again: the next success resyncs
	}
	a.out.push(action{kind: actSubscribe, topic: a.Topic(protocol.KindCmd)})
	if a.dev.Rejoining() {
		a.out.push(action{kind: actSubscribe, topic: a.Topic(protocol.KindEvent)})
	}
}

// after finishes an operation on the device: it saves the state, brings
// the thermostat and the status view up to date, and only then queues the
// message the device wants sent. That order is the protocol's rule (nothing
// is sent that a restart could contradict) and means that whoever sees the
// message finds the device already running with what it says. If the
// state cannot be saved, the operation is rolled back and its error
// (wrapping ErrNotSaved) returned.
func (a *Agent) after(m *protocol.Message) error {
	wasRejoining := a.view.rejoining
	if err := a.persist(); err != nil {
		a.rollback()
		return err
	}
	a.updateView()
	eff := settingsOf(a.dev.Effective())
	if err := a.cfg.Loop.SetSettings(eff); err != nil {
		// Only valid values are ever stored, so this is a bug, not input.
		a.log.Error("the control loop refused the stored settings", "settings", eff, "err", err)
	}
	if m != nil {
		a.queueEvent(*m)
	}
	if wasRejoining && !a.dev.Rejoining() {
		a.log.Info("rejoin finished", "vc", a.dev.Clock(), "props", propsLog(a.dev.Props()))
		a.out.push(action{kind: actUnsubscribe, topic: a.Topic(protocol.KindEvent)})
	}
	return nil
}

// queueEvent queues m for the publisher. One that cannot be encoded is a
// bug: it is logged and left out (the next connect sends the full state).
func (a *Agent) queueEvent(m protocol.Message) {
	payload, err := m.Encode()
	if err != nil {
		a.log.Error("event not sent: it cannot be encoded", "vc", m.VC, "err", err)
		return
	}
	a.out.push(action{kind: actEvent, topic: a.Topic(protocol.KindEvent), payload: payload, qos: 1, retain: true, vc: m.VC})
}

func (a *Agent) updateView() {
	a.viewMu.Lock()
	defer a.viewMu.Unlock()
	st := a.dev.State()
	a.view = view{
		props:     st.Replica.Props,
		pending:   st.Pending,
		effective: a.dev.Effective(),
		vc:        st.Replica.VC,
		rejoining: st.Rejoining,
		// Taken with the clock, so Status never shows the connection up
		// beside the clock from before the Event its connect sent.
		connected: a.connected.Load(),
	}
}

// Connected is transport's OnConnect: the connection is up and subscribed.
// The device re-sends its full state (unless rejoining), announces itself
// (status online), and reports its telemetry.
func (a *Agent) Connected(context.Context, *transport.Client) { a.connect() }

func (a *Agent) connect() {
	a.ops.Push(func() {
		a.connected.Store(true)
		m := a.dev.Connect()
		if a.dev.Rejoining() && a.syncTimer == nil {
			// Counted from the first connect: before it, nothing could
			// have been heard.
			a.syncTimer = a.clock.NewTimer(a.cfg.SyncTimeout)
			a.log.Info("connected; rejoining: waiting for the device's retained event or a live command", "sync_timeout", a.cfg.SyncTimeout)
		}
		if err := a.after(m); err != nil {
			// The Event carries a clock tick that must be saved first. The
			// connection stays: status and telemetry need no saving, and
			// the Event goes out once the state is saved again (resync).
			a.log.Warn("connected, but the device's event is not sent: the state cannot be saved", "err", err)
		}
		// The Event goes before the status: the publisher waits for each
		// acknowledgement, and a broker busy with a returning fleet's
		// handshakes answered the status ~0.1 s late, holding the Event
		// (what the controller needs from the device) behind it. The
		// controller's greeting, sent on the status, then carries what
		// it took from the Event.
		a.out.push(action{kind: actStatus, topic: a.Topic(protocol.KindStatus), payload: protocol.Status{Online: true, Firmware: a.cfg.Firmware}.Encode(), qos: 1, retain: true})
		a.queueTelemetry(a.cfg.Loop.Snapshot())
	})
}

// Disconnected is transport's OnDisconnect: local writes now wait for the
// next connection.
func (a *Agent) Disconnected(err error) {
	a.ops.Push(func() {
		a.connected.Store(false)
		a.dev.Disconnect()
		a.updateView()
	})
}

// Handle is transport's Handler: one message of a subscription.
func (a *Agent) Handle(m transport.Message) {
	a.ops.Push(func() { a.receive(m) })
}

func (a *Agent) reject(m transport.Message, reason string, args ...any) {
	a.counters.rejected.Add(1)
	a.log.Warn("message rejected", append([]any{"topic", m.Topic, "bytes", len(m.Payload), "reason", reason}, args...)...)
}

// receive handles one message of a subscription. A message whose
// outcome cannot be saved is not applied: the device keeps its last saved
// state, sends nothing and acknowledges the delivery all the same (MQTT
// gives no way to refuse one). It is not lost: the Command and the Event
// are retained, and the broker delivers them again on the subscription
// resync makes once the state can be saved, or on the next connect.
func (a *Agent) receive(tm transport.Message) {
	a.counters.received.Add(1)
	id, kind, err := protocol.ParseTopic(a.root, tm.Topic)
	if err != nil {
		a.reject(tm, err.Error())
		return
	}
	if id != a.id {
		a.reject(tm, fmt.Sprintf("topic of another device %q", id))
		return
	}
	switch kind {
	case protocol.KindCmd:
	case protocol.KindEvent:
		if !a.dev.Rejoining() {
			return // the echo of our own event, or a late one from the rejoin subscription
		}
	default:
		a.reject(tm, fmt.Sprintf("the device does not take %s messages", kind))
		return
	}
	m, issues, err := protocol.DecodeMessage(tm.Payload)
	if err != nil {
		a.reject(tm, err.Error())
		return
	}
	for _, is := range issues {
		if is.Unknown {
			a.log.Info("unknown property ignored", "topic", tm.Topic, "property", is.Name)
			continue
		}
		a.counters.rejectedProps.Add(1)
		a.log.Warn("property rejected", "topic", tm.Topic, "property", is.Name, "reason", is.Reason)
	}
	var out protocol.Outcome
	var reply *protocol.Message
	if kind == protocol.KindEvent {
		out, reply, err = a.dev.ReceiveOwnEvent(m)
	} else {
		out, reply, err = a.dev.ReceiveCommand(m, tm.Retained)
	}
	if err != nil {
		a.reject(tm, err.Error())
		return
	}
	if err := a.after(reply); err != nil {
		a.log.Warn("message not applied: the state cannot be saved; it is received again once it can",
			"topic", tm.Topic, "vc", m.VC, "retained", tm.Retained, "err", err)
		return
	}
	switch {
	case kind == protocol.KindEvent:
		// Even a duplicate (older than a Command merged before it) ends
		// the rejoin.
		a.log.Info("rejoin: own retained event received", "vc", m.VC, "retained", tm.Retained)
	case out.Duplicate:
	case len(out.Applied) > 0:
		a.counters.applied.Add(1)
		a.log.Info("command applied", "vc", m.VC, "applied", out.Applied, "kept", out.Kept, "src", m.Src, "retained", tm.Retained)
	case len(out.Kept) > 0:
		a.counters.discarded.Add(1)
		a.log.Info("command discarded: the device's values stand", "vc", m.VC, "kept", out.Kept, "conflicts", out.Conflicts)
	}
	if out.Duplicate {
		a.counters.duplicates.Add(1)
		a.log.Debug("duplicate ignored", "topic", tm.Topic, "vc", m.VC, "clock", a.dev.Clock())
	}
}

// Set is a change made at the device through its local control interface
// (src "local"). It returns once the change is saved: acknowledged changes
// survive a crash. Offline, the change goes out on the next connection.
func (a *Agent) Set(ctx context.Context, changes map[string]any) error {
	return a.LocalWrite(ctx, changes, protocol.SrcLocal)
}

// LocalWrite applies a change made at the device, a device event that
// wins concurrent conflicts. An invalid value is refused with the reason
// and changes nothing; so is a change that cannot be saved (the error
// wraps ErrNotSaved and the store's error).
func (a *Agent) LocalWrite(ctx context.Context, changes map[string]any, src string) error {
	return a.do(ctx, func() error {
		m, err := a.dev.LocalWrite(changes, src)
		if err != nil {
			return err
		}
		if err := a.after(m); err != nil {
			a.log.Warn("local change refused", "src", src, "changes", changes, "err", err)
			return err
		}
		a.log.Info("local change", "src", src, "changes", changes, "vc", a.dev.Clock(), "connected", a.connected.Load())
		return nil
	})
}

// ButtonChange is the control loop's OnLocalChange: a burst of button
// presses ended with these settings. Only what differs from the device's
// settings is written (src "button"), so an untouched property keeps its
// stamp. It does not block.
func (a *Agent) ButtonChange(s control.Settings) {
	a.ops.Push(func() {
		eff := a.dev.Effective()
		changes := map[string]any{}
		if v, ok := eff[protocol.PropSetpoint].(float64); !ok || math.Abs(v-s.SetpointC) > 1e-9 {
			changes[protocol.PropSetpoint] = s.SetpointC
		}
		if v, ok := eff[protocol.PropMode].(string); !ok || v != s.Mode {
			changes[protocol.PropMode] = s.Mode
		}
		if len(changes) == 0 {
			return
		}
		m, err := a.dev.LocalWrite(changes, protocol.SrcButton)
		if err != nil {
			a.log.Error("button change refused", "changes", changes, "err", err)
			return
		}
		if err := a.after(m); err != nil {
			// rollback has put the loop back on the saved settings.
			a.log.Warn("button change refused: the thermostat goes back to its last saved settings", "changes", changes, "err", err)
			return
		}
		a.log.Info("button change", "changes", changes, "vc", a.dev.Clock())
	})
}

// PresetButton is the control loop's long press of the mode button: the
// next preset, in the order of their names, after the one in force (the
// first when none is), written as a button change. It does not block.
func (a *Agent) PresetButton() {
	a.ops.Push(func() {
		eff := a.dev.Effective()
		names := protocol.PresetsIn(eff).Names()
		cur, _ := eff[protocol.PropPreset].(string)
		next := names[0]
		if i := slices.Index(names, cur); i >= 0 {
			next = names[(i+1)%len(names)]
		}
		changes := map[string]any{protocol.PropPreset: next}
		m, err := a.dev.LocalWrite(changes, protocol.SrcButton)
		if err != nil {
			a.log.Error("preset button refused", "preset", next, "err", err)
			return
		}
		if err := a.after(m); err != nil {
			a.log.Warn("preset button refused: the thermostat goes back to its last saved settings", "preset", next, "err", err)
			return
		}
		a.log.Info("preset button", "preset", next, "vc", a.dev.Clock())
	})
}

// OutputsChanged is the control loop's OnOutputChange: telemetry goes out
// at once when a relay switches. It does not block.
func (a *Agent) OutputsChanged(s control.Snapshot) { a.queueTelemetry(s) }

// Alerts is the device's set of conditions that need a person: the parts
// of the firmware that detect one (storage, the link, the sensor) raise and
// clear them here.
func (a *Agent) Alerts() *alert.Set { return a.alerts }

// syncSensorAlert raises sensor_fault while the control loop has no valid
// reading of its sensor.
func (a *Agent) syncSensorAlert(s control.Snapshot) {
	a.alerts.Set(protocol.AlertSensorFault, !s.SensorOK, "the control sensor gives no valid reading: outputs off, frost protection only")
}

func (a *Agent) queueTelemetry(s control.Snapshot) {
	a.syncSensorAlert(s)
	if !a.connected.Load() {
		return // QoS 0 and not queued: the next one after connecting is fresh
	}
	t := TelemetryOf(s, a.clock.Now())
	t.Next = a.Next()
	t.Alerts = a.alerts.Codes()
	t.CertExpires = a.certExpires()
	t.Firmware = a.cfg.Firmware
	payload, err := t.Encode()
	if err != nil {
		a.log.Error("telemetry", "err", err)
		return
	}
	a.out.push(action{kind: actTelemetry, topic: a.Topic(protocol.KindTelemetry), payload: payload})
}

// TelemetryOf renders a control loop snapshot as the telemetry payload,
// stamped now (the wall clock: a simulated room's clock may run fast). The
// temperature is left out while the sensor is not ok: a stale value must
// not pass for a reading.
func TelemetryOf(s control.Snapshot, now time.Time) protocol.Telemetry {
	t := protocol.Telemetry{
		V:        protocol.Version,
		TS:       now,
		Heat:     s.Outputs.Heat,
		Cool:     s.Outputs.Cool,
		SensorOK: s.SensorOK,
		Action:   protocol.ActionOf(s.Outputs.Heat, s.Outputs.Cool, s.Settings.Mode),
	}
	if s.HasTemperature && s.SensorOK {
		c := s.TempC()
		t.TempC = &c
		if s.HasHumidity {
			h := s.HumidityPct()
			t.HumidityPct = &h
		}
	}
	for _, r := range s.Sensors {
		if r.Sensor == "" || protocol.CheckSensorName(r.Sensor) != nil {
			continue
		}
		if t.Sensors == nil {
			t.Sensors = map[string]protocol.SensorReport{}
		}
		rep := protocol.SensorReport{OK: r.OK() && !r.Time.IsZero()}
		if rep.OK {
			c := math.Round(r.Temperature.Celsius()*100) / 100
			rep.TempC = &c
			if r.HasHumidity {
				h := math.Round(float64(r.Humidity)/float64(physic.PercentRH)*10) / 10
				rep.HumidityPct = &h
			}
		}
		t.Sensors[r.Sensor] = rep
	}
	return t
}

// Outputs are the relays as driven.
type Outputs struct {
	Heat bool `json:"heat"`
	Cool bool `json:"cool"`
	Fan  bool `json:"fan"`
}

// Status is what `thermostat status` prints.
type Status struct {
	ID string `json:"id"`
	// Props are the stamped properties, as on the wire.
	Props protocol.Props `json:"props"`
	// Pending holds local writes made while rejoining, not yet stamped.
	Pending map[string]any `json:"pending,omitempty"`
	// Effective are the values the thermostat runs with.
	Effective   map[string]any `json:"effective"`
	VC          protocol.Clock `json:"vc"`
	Connected   bool           `json:"connected"`
	Rejoining   bool           `json:"rejoining"`
	TempC       *float64       `json:"temp_c"`
	HumidityPct *float64       `json:"humidity_pct,omitempty"`
	SensorOK    bool           `json:"sensor_ok"`
	Outputs     Outputs        `json:"outputs"`
	Counters    Counters       `json:"counters"`
	// Next is the schedule's next entry while it is enabled.
	Next *protocol.Next `json:"next,omitempty"`
	// Alerts are the device's conditions that need a person; [] when none.
	Alerts []protocol.Alert `json:"alerts"`
	// CertExpires is when the certificate in use ends.
	CertExpires *time.Time `json:"cert_expires,omitempty"`
	// Firmware is the running firmware's version (docs/ota.md).
	Firmware string `json:"firmware,omitempty"`
}

// certExpires is Config.CertExpiry's answer, nil without one.
func (a *Agent) certExpires() *time.Time {
	if a.cfg.CertExpiry == nil {
		return nil
	}
	t := a.cfg.CertExpiry().UTC()
	if t.IsZero() {
		return nil
	}
	return &t
}

// Status reports the agent's state. It never waits for the Run goroutine.
func (a *Agent) Status(context.Context) (any, error) { return a.Snapshot(), nil }

// Snapshot is Status with its concrete type.
func (a *Agent) Snapshot() Status {
	a.viewMu.Lock()
	v := a.view
	a.viewMu.Unlock()
	s := a.cfg.Loop.Snapshot()
	a.syncSensorAlert(s)
	st := Status{
		ID:        a.id,
		Props:     v.props,
		Pending:   v.pending,
		Effective: v.effective,
		VC:        v.vc,
		Connected: v.connected,
		Rejoining: v.rejoining,
		SensorOK:  s.SensorOK,
		Outputs:   Outputs{Heat: s.Outputs.Heat, Cool: s.Outputs.Cool, Fan: s.Outputs.Fan},
		Counters:  a.Counters(),
		Alerts:    a.alerts.List(),
		Next:      a.Next(),
		Firmware:  a.cfg.Firmware,

		CertExpires: a.certExpires(),
	}
	if s.HasTemperature {
		c := s.TempC()
		st.TempC = &c
		if s.HasHumidity {
			h := s.HumidityPct()
			st.HumidityPct = &h
		}
	}
	return st
}

// Counters returns the message counters.
func (a *Agent) Counters() Counters {
	c := &a.counters
	return Counters{
		Received: c.received.Load(), Rejected: c.rejected.Load(), RejectedProps: c.rejectedProps.Load(),
		Duplicates: c.duplicates.Load(), Applied: c.applied.Load(), Discarded: c.discarded.Load(),
		EventsSent: c.eventsSent.Load(),
	}
}

// Saves returns how many times the state was written since start, and how
// many writes failed (metrics).
func (a *Agent) Saves() (ok, failed uint64) {
	return a.counters.saves.Load(), a.counters.saveFailures.Load()
}

func propsLog(p protocol.Props) string {
	s := ""
	for _, k := range slices.Sorted(maps.Keys(p)) {
		if s != "" {
			s += " "
		}
		s += fmt.Sprintf("%s=%v@%v", k, p[k].Val, p[k].W)
	}
	return s
}
