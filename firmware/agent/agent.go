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
package agent

import (
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
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// Defaults of Config.
const (
	DefaultTelemetryInterval = 30 * time.Second
	DefaultSyncTimeout       = 10 * time.Second
)

// Conn is the broker connection the agent uses; *transport.Client is one.
// Subscriptions are kept across reconnects by the connection itself.
type Conn interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	Subscribe(filter string, qos byte) error
	Unsubscribe(filter string) error
	Connected() bool
}

// Store persists the device state; *state.Store is one. Save must be
// atomic and durable when it returns.
type Store interface {
	Save(protocol.DeviceState) error
}

// Thermostat is the control loop; *control.Loop is one.
type Thermostat interface {
	SetSettings(control.Settings) error
	Snapshot() control.Snapshot
}

// Config configures an Agent. ID, Store and Thermostat are required.
type Config struct {
	// ID is the device id: the Common Name of the device certificate.
	ID string
	// Root is the topic root, protocol.DefaultRoot when empty.
	Root              string
	Store             Store
	Thermostat        Thermostat
	TelemetryInterval time.Duration // DefaultTelemetryInterval when 0
	SyncTimeout       time.Duration // DefaultSyncTimeout when 0
	// Clock drives the telemetry interval and the sync timeout; the wall
	// clock when nil.
	Clock  hal.Clock
	Logger *slog.Logger
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
	dev       *protocol.Device
	lastSaved []byte
	syncTimer hal.Timer
	conn      Conn

	ops     opQueue
	out     outbox
	stopped chan struct{} // closed when Run returns
	fatal   error         // set before stopped is closed

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
	}
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
// the rejoin resumes it.
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
	if cfg.Store == nil || cfg.Thermostat == nil {
		return nil, errors.New("agent: a store and a thermostat are required")
	}
	if cfg.TelemetryInterval <= 0 {
		cfg.TelemetryInterval = DefaultTelemetryInterval
	}
	if cfg.SyncTimeout <= 0 {
		cfg.SyncTimeout = DefaultSyncTimeout
	}
	if cfg.Clock == nil {
		cfg.Clock = hal.SystemClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	a := &Agent{
		cfg:     cfg,
		log:     cfg.Logger.With("component", "agent", "device", cfg.ID),
		clock:   cfg.Clock,
		id:      cfg.ID,
		root:    cfg.Root,
		ops:     newOpQueue(),
		out:     newOutbox(),
		stopped: make(chan struct{}),
		alerts:  alert.New(cfg.Clock.Now),
	}
	// A new or cleared alert goes out at once, not at the next interval.
	a.alerts.OnChange(func() { a.queueTelemetry(a.cfg.Thermostat.Snapshot()) })
	if stored == nil {
		d := control.DefaultSettings
		dev, err := protocol.NewDevice(map[string]any{
			protocol.PropSetpoint: d.SetpointC,
			protocol.PropMode:     d.Mode,
		})
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.dev = dev
		a.log.Warn("no stored state: rejoining; no event is sent until the device has caught up",
			"sync_timeout", cfg.SyncTimeout)
	} else {
		a.dev = protocol.RestoreDevice(*stored)
		a.lastSaved, _ = json.Marshal(a.dev.State())
		if a.dev.Rejoining() {
			a.log.Warn("resuming an unfinished rejoin")
		}
	}
	if err := a.persist(); err != nil {
		return nil, err
	}
	a.updateView()
	return a, nil
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
// publishes on conn. It returns nil when ctx is done, and an error when the
// state cannot be saved: nothing that depends on unsaved state is sent,
// and the caller should exit so a restart resumes from what was saved.
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
		var syncC <-chan time.Time
		if a.syncTimer != nil {
			syncC = a.syncTimer.C()
		}
		select {
		case <-ctx.Done():
			a.fail(nil)
			if a.syncTimer != nil {
				a.syncTimer.Stop()
			}
			return nil
		case <-a.ops.wake:
			for _, op := range a.ops.take() {
				if err := op(); err != nil {
					a.fail(err)
					return err
				}
			}
		case <-telemetry.C():
			telemetry = a.clock.NewTimer(a.cfg.TelemetryInterval)
			a.queueTelemetry(a.cfg.Thermostat.Snapshot())
		case <-syncC:
			a.syncTimer = nil
			if a.dev.Rejoining() {
				a.log.Warn("rejoin: nothing heard from the controller or the broker in time; resuming with what the device has",
					"sync_timeout", a.cfg.SyncTimeout)
				if err := a.after(a.dev.SyncTimeout()); err != nil {
					a.fail(err)
					return err
				}
			}
		}
	}
}

// fail records why Run stopped and drops every queued operation; their
// waiters see stopped.
func (a *Agent) fail(err error) {
	a.fatal = err
	a.ops.close()
}

// do runs f on the Run goroutine and waits for it.
func (a *Agent) do(ctx context.Context, f func() error) error {
	done := make(chan error, 1)
	if !a.ops.push(func() error {
		err := f()
		done <- err
		if errors.Is(err, errFatal) {
			return err
		}
		return nil
	}) {
		return a.stopErr()
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
		return a.stopErr()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (a *Agent) stopErr() error {
	select {
	case <-a.stopped:
		if a.fatal != nil {
			return fmt.Errorf("agent stopped: %w", a.fatal)
		}
	default:
	}
	return errors.New("agent stopped")
}

// errFatal marks errors after which Run must stop: the state could not be
// saved.
var errFatal = errors.New("state not saved")

// persist saves the state if it changed since the last save.
func (a *Agent) persist() error {
	st := a.dev.State()
	b, err := json.Marshal(st)
	if err != nil {
		return fmt.Errorf("%w: %v", errFatal, err)
	}
	if string(b) == string(a.lastSaved) {
		return nil
	}
	if err := a.cfg.Store.Save(st); err != nil {
		a.log.Error("saving the state failed; stopping before anything that depends on it is sent", "err", err)
		return fmt.Errorf("%w: %v", errFatal, err)
	}
	a.lastSaved = b
	return nil
}

// after finishes an operation on the device: it saves the state, brings
// the thermostat and the status view up to date, and only then queues the
// message the device wants sent. That order is the protocol's rule (nothing
// is sent that a restart could contradict) and means that whoever sees the
// message finds the device already running with what it says.
func (a *Agent) after(m *protocol.Message) error {
	wasRejoining := a.view.rejoining
	if err := a.persist(); err != nil {
		return err
	}
	a.updateView()
	eff := settingsOf(a.dev.Effective())
	if err := a.cfg.Thermostat.SetSettings(eff); err != nil {
		// Only valid values are ever stored, so this is a bug, not input.
		a.log.Error("the control loop refused the stored settings", "settings", eff, "err", err)
	}
	if m != nil {
		if err := a.queueEvent(*m); err != nil {
			return err
		}
	}
	if wasRejoining && !a.dev.Rejoining() {
		a.log.Info("rejoin finished", "vc", a.dev.Clock(), "props", propsLog(a.dev.Props()))
		a.out.push(action{kind: actUnsubscribe, topic: a.Topic(protocol.KindEvent)})
	}
	return nil
}

func (a *Agent) queueEvent(m protocol.Message) error {
	payload, err := m.Encode()
	if err != nil {
		return fmt.Errorf("%w: %v", errFatal, err)
	}
	a.out.push(action{kind: actEvent, topic: a.Topic(protocol.KindEvent), payload: payload, qos: 1, retain: true, vc: m.VC})
	return nil
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
// The device announces itself (status online), re-sends its full state
// (unless rejoining), and reports its telemetry.
func (a *Agent) Connected(context.Context, *transport.Client) { a.connect() }

func (a *Agent) connect() {
	a.ops.push(func() error {
		a.connected.Store(true)
		a.out.push(action{kind: actStatus, topic: a.Topic(protocol.KindStatus), payload: protocol.Status{Online: true}.Encode(), qos: 1, retain: true})
		m := a.dev.Connect()
		if a.dev.Rejoining() && a.syncTimer == nil {
			// Counted from the first connect: before it, nothing could
			// have been heard.
			a.syncTimer = a.clock.NewTimer(a.cfg.SyncTimeout)
			a.log.Info("connected; rejoining: waiting for the device's retained event or a live command", "sync_timeout", a.cfg.SyncTimeout)
		}
		if err := a.after(m); err != nil {
			return err
		}
		a.queueTelemetry(a.cfg.Thermostat.Snapshot())
		return nil
	})
}

// Disconnected is transport's OnDisconnect: local writes now wait for the
// next connection.
func (a *Agent) Disconnected(err error) {
	a.ops.push(func() error {
		a.connected.Store(false)
		a.dev.Disconnect()
		a.updateView()
		return nil
	})
}

// Handle is transport's Handler: one message of a subscription.
func (a *Agent) Handle(m transport.Message) {
	a.ops.push(func() error { return a.receive(m) })
}

func (a *Agent) reject(m transport.Message, reason string, args ...any) {
	a.counters.rejected.Add(1)
	a.log.Warn("message rejected", append([]any{"topic", m.Topic, "bytes", len(m.Payload), "reason", reason}, args...)...)
}

func (a *Agent) receive(tm transport.Message) error {
	a.counters.received.Add(1)
	id, kind, err := protocol.ParseTopic(a.root, tm.Topic)
	if err != nil {
		a.reject(tm, err.Error())
		return nil
	}
	if id != a.id {
		a.reject(tm, fmt.Sprintf("topic of another device %q", id))
		return nil
	}
	switch kind {
	case protocol.KindCmd:
	case protocol.KindEvent:
		if !a.dev.Rejoining() {
			return nil // the echo of our own event, or a late one from the rejoin subscription
		}
	default:
		a.reject(tm, fmt.Sprintf("the device does not take %s messages", kind))
		return nil
	}
	m, issues, err := protocol.DecodeMessage(tm.Payload)
	if err != nil {
		a.reject(tm, err.Error())
		return nil
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
		if err != nil {
			a.reject(tm, err.Error())
			return nil
		}
		a.log.Info("rejoin: own retained event received", "vc", m.VC, "retained", tm.Retained)
	} else {
		out, reply, err = a.dev.ReceiveCommand(m, tm.Retained)
		if err != nil {
			a.reject(tm, err.Error())
			return nil
		}
		switch {
		case out.Duplicate:
		case len(out.Applied) > 0:
			a.counters.applied.Add(1)
			a.log.Info("command applied", "vc", m.VC, "applied", out.Applied, "kept", out.Kept, "src", m.Src, "retained", tm.Retained)
		case len(out.Kept) > 0:
			a.counters.discarded.Add(1)
			a.log.Info("command discarded: the device's values stand", "vc", m.VC, "kept", out.Kept, "conflicts", out.Conflicts)
		}
	}
	if out.Duplicate {
		a.counters.duplicates.Add(1)
		a.log.Debug("duplicate ignored", "topic", tm.Topic, "vc", m.VC, "clock", a.dev.Clock())
	}
	return a.after(reply)
}

// Set is a change made at the device through its local control interface
// (src "local"). It returns once the change is saved: acknowledged changes
// survive a crash. Offline, the change goes out on the next connection.
func (a *Agent) Set(ctx context.Context, changes map[string]any) error {
	return a.LocalWrite(ctx, changes, protocol.SrcLocal)
}

// LocalWrite applies a change made at the device, a device event that
// wins concurrent conflicts. An invalid value is refused with the reason
// and changes nothing.
func (a *Agent) LocalWrite(ctx context.Context, changes map[string]any, src string) error {
	return a.do(ctx, func() error {
		m, err := a.dev.LocalWrite(changes, src)
		if err != nil {
			return err
		}
		a.log.Info("local change", "src", src, "changes", changes, "vc", a.dev.Clock(), "connected", a.connected.Load())
		return a.after(m)
	})
}

// ButtonChange is the control loop's OnLocalChange: a burst of button
// presses ended with these settings. Only what differs from the device's
// settings is written (src "button"), so an untouched property keeps its
// stamp. It does not block.
func (a *Agent) ButtonChange(s control.Settings) {
	a.ops.push(func() error {
		eff := a.dev.Effective()
		changes := map[string]any{}
		if v, ok := eff[protocol.PropSetpoint].(float64); !ok || math.Abs(v-s.SetpointC) > 1e-9 {
			changes[protocol.PropSetpoint] = s.SetpointC
		}
		if v, ok := eff[protocol.PropMode].(string); !ok || v != s.Mode {
			changes[protocol.PropMode] = s.Mode
		}
		if len(changes) == 0 {
			return nil
		}
		m, err := a.dev.LocalWrite(changes, protocol.SrcButton)
		if err != nil {
			a.log.Error("button change refused", "changes", changes, "err", err)
			return nil
		}
		a.log.Info("button change", "changes", changes, "vc", a.dev.Clock())
		return a.after(m)
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
	t.Alerts = a.alerts.Codes()
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
	}
	if s.HasTemperature && s.SensorOK {
		c := s.TempC()
		t.TempC = &c
		if s.HasHumidity {
			h := s.HumidityPct()
			t.HumidityPct = &h
		}
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
	// Alerts are the device's conditions that need a person; [] when none.
	Alerts []protocol.Alert `json:"alerts"`
}

// Status reports the agent's state. It never waits for the Run goroutine.
func (a *Agent) Status(context.Context) (any, error) { return a.Snapshot(), nil }

// Snapshot is Status with its concrete type.
func (a *Agent) Snapshot() Status {
	a.viewMu.Lock()
	v := a.view
	a.viewMu.Unlock()
	s := a.cfg.Thermostat.Snapshot()
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
