// Package runner is `thermostat run` as a library: it opens the board the
// configuration selects, the state directory and the control socket, and
// runs the control loop, the sync agent and the broker connection together
// until the context ends or one of them fails. With metrics_addr it serves
// Prometheus metrics too (firmware/metrics); their failure stops nothing.
//
// The thermostat binary's main calls it; so can a harness that runs many
// simulated thermostats in one process (the mttr tool), giving each its own
// board through Options.
package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/firmware/metrics"
	"github.com/thermofleet/thermo/firmware/renew"
	"github.com/thermofleet/thermo/firmware/state"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/rpi"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// Options are what a caller can set beyond the configuration.
type Options struct {
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Board replaces the board cfg.HAL selects; the thermostat closes it.
	// BoardClock is the clock its timers run on (a simulated board's), the
	// wall clock when nil.
	Board      hal.Board
	BoardClock hal.Clock
	// NoControlSocket runs without the local control socket.
	NoControlSocket bool
	// Backoff overrides transport's reconnect backoff.
	Backoff transport.Backoff
	// Firmware is the firmware version the device reports.
	Firmware string
	// OnOTA, if set, gets the payload of every message on the device's
	// ota topic (an update offer; empty when withdrawn), which the
	// thermostat then subscribes to.
	OnOTA func(payload []byte)
}

// Thermostat is one running thermostat: board, control loop, agent,
// broker connection and control socket.
type Thermostat struct {
	ID string

	cfg    config.Config
	log    *slog.Logger
	store  *state.Store
	board  hal.Board
	loop   *control.Loop
	agent  *agent.Agent
	client *transport.Client
	ctl    *localctl.Server
	renew  *renew.Renewer
	// metrics is the listener of --metrics-addr, nil without it.
	metrics net.Listener
}

// New opens everything cfg names and fails with a message a user can act
// on: a certificate with no valid device id, a corrupt state file (with how
// to reset it), a state directory in use, a board that does not start, a
// control socket another agent holds. cfg must be valid (Validate).
func New(cfg config.Config, o Options) (_ *Thermostat, err error) {
	log := o.Logger
	if log == nil {
		log = slog.Default()
	}
	// A certificate renewal cut short by a kill or a power cut is
	// finished or undone before the key and certificate are read.
	if did, err := renew.Recover(cfg.Cert, cfg.Key); err != nil {
		return nil, err
	} else if did != "" {
		log.Warn("certificate swap recovered", "did", did)
	}
	id, err := provisioning.DeviceID(cfg.Cert)
	if err != nil {
		return nil, fmt.Errorf("device id: %w", err)
	}
	log = log.With("device", id)
	t := &Thermostat{ID: id, cfg: cfg, log: log}
	defer func() {
		if err != nil {
			t.close()
		}
	}()

	if t.store, err = state.Open(cfg.StateDir); err != nil {
		return nil, err
	}
	var stored *protocol.DeviceState
	switch st, err := t.store.Load(); {
	case errors.Is(err, state.ErrNoState):
		log.Warn("no state file: first boot (or a wiped state directory); the device will rejoin", "file", t.store.Path())
	case err != nil:
		return nil, err
	default:
		stored = &st
	}

	clock := o.BoardClock
	switch {
	case o.Board != nil:
		t.board = o.Board
	case cfg.HAL == config.HALSim:
		b, err := sim.New(sim.Options{Speed: cfg.Sim.Speed, InitialC: cfg.Sim.InitialC, OutsideC: cfg.Sim.OutsideC})
		if err != nil {
			return nil, fmt.Errorf("simulated board: %w", err)
		}
		t.board, clock = b, b.Clock()
	case cfg.HAL == config.HALRPi:
		if t.board, err = rpi.Open(cfg.Hardware, log); err != nil {
			return nil, fmt.Errorf("board: %w", err)
		}
	default:
		return nil, fmt.Errorf("unknown board %q", cfg.HAL)
	}
	if clock == nil {
		clock = hal.SystemClock{}
	}

	// The agent and the loop each need the other: the agent hands the loop
	// its settings, the loop reports output changes and what the buttons
	// ask for. Both are made first, then wired, before anything runs.
	loop, err := control.New(cfg.Control, t.board, control.WithClock(clock), control.WithLogger(log))
	if err != nil {
		return nil, fmt.Errorf("control loop: %w", err)
	}
	t.loop = loop
	t.agent, err = agent.New(agent.Config{
		ID:                id,
		Root:              cfg.TopicRoot,
		Store:             t.store,
		Loop:              loop,
		ScheduleClock:     clock,
		FirstValues:       firstValues(cfg),
		TelemetryInterval: cfg.TelemetryInterval,
		SyncTimeout:       cfg.SyncTimeout,
		CertExpiry: func() time.Time {
			if t.renew == nil {
				return time.Time{}
			}
			return t.renew.NotAfter()
		},
		Logger:   log,
		Firmware: o.Firmware,
	}, stored)
	if err != nil {
		return nil, err
	}
	if err := loop.SetSettings(t.agent.Settings()); err != nil {
		return nil, fmt.Errorf("control loop: %w", err)
	}
	loop.Notify(t.agent.OutputsChanged, t.agent.ButtonChange)
	loop.NotifyPresetButton(t.agent.PresetButton)

	if t.renew, err = renew.New(renew.Options{
		ID: id, Root: cfg.TopicRoot, CAFile: cfg.CA, CertFile: cfg.Cert, KeyFile: cfg.Key,
		RenewAt: cfg.RenewAt, EnrollURL: cfg.EnrollURL, Alerts: t.agent.Alerts(), Logger: log,
	}); err != nil {
		return nil, err
	}
	t.client, err = transport.New(transport.Options{
		Broker:       cfg.Broker,
		Failover:     cfg.Failover,
		CAFile:       cfg.CA,
		CertFile:     cfg.Cert,
		KeyFile:      cfg.Key,
		KeepAlive:    cfg.KeepAlive,
		Backoff:      o.Backoff,
		Will:         t.agent.Will(),
		Farewell:     t.agent.Farewell(),
		OnConnect:    t.agent.Connected,
		OnDisconnect: t.agent.Disconnected,
		OnTrouble:    t.agent.LinkTrouble,
		Handler:      t.handler(o.OnOTA),
		Logger:       log,
	})
	if err != nil {
		return nil, err
	}
	if err := t.client.Subscribe(t.renew.Topic(), 1); err != nil {
		return nil, err
	}
	if o.OnOTA != nil {
		if err := t.client.Subscribe(protocol.Topic(cfg.TopicRoot, id, protocol.KindOTA), 1); err != nil {
			return nil, fmt.Errorf("ota: %w", err)
		}
	}
	if !o.NoControlSocket {
		if t.ctl, err = localctl.Listen(cfg.ControlSocket, log); err != nil {
			return nil, err
		}
	}
	if cfg.MetricsAddr != "" {
		if t.metrics, err = metrics.Listen(cfg.MetricsAddr, log); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// handler routes the device's ota topic to onOTA, its certificate
// topic to the renewer, the rest to the agent.
func (t *Thermostat) handler(onOTA func([]byte)) func(transport.Message) {
	ota := protocol.Topic(t.cfg.TopicRoot, t.ID, protocol.KindOTA)
	return func(m transport.Message) {
		switch {
		case onOTA != nil && m.Topic == ota:
			onOTA(m.Payload)
		case !t.renew.Handle(m):
			t.agent.Handle(m)
		}
	}
}

// Synced reports whether the device has heard from the controller since
// this start and is not rejoining: its state is in sync.
func (t *Thermostat) Synced() error {
	s := t.agent.Snapshot()
	switch {
	case !s.Connected:
		return errors.New("broker not connected")
	case s.Rejoining:
		return errors.New("rejoining: waiting for the controller's state")
	case s.Counters.Received == 0:
		return errors.New("nothing received from the controller yet")
	}
	return nil
}

// firstValues are the configuration's presets and schedule, the device's
// values of them until a write replaces them.
func firstValues(cfg config.Config) map[string]any {
	out := map[string]any{}
	if cfg.Presets != nil {
		out[protocol.PropPresets] = cfg.Presets
	}
	if cfg.Schedule != nil {
		out[protocol.PropSchedule] = *cfg.Schedule
	}
	return out
}

// Agent is the sync agent (status, local writes).
func (t *Thermostat) Agent() *agent.Agent { return t.agent }

// Loop is the control loop; its Healthy feeds the systemd watchdog.
func (t *Thermostat) Loop() *control.Loop { return t.loop }

// Client is the broker connection (its Stats, Connected).
func (t *Thermostat) Client() *transport.Client { return t.client }

// MetricsAddr is where /metrics is served, nil without --metrics-addr.
func (t *Thermostat) MetricsAddr() net.Addr {
	if t.metrics == nil {
		return nil
	}
	return t.metrics.Addr()
}

// Board is the board the thermostat drives.
func (t *Thermostat) Board() hal.Board { return t.board }

// Run runs until ctx is done (a clean stop: status offline is published,
// every output is switched off, nil is returned) or a part fails, which
// stops the rest and returns its error; the outputs are off either way.
// Everything New opened is closed when Run returns.
func (t *Thermostat) Run(ctx context.Context) error {
	defer t.close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	t.log.Info("thermostat starting", "broker", strings.Join(t.cfg.Brokers(), ","), "hal", t.cfg.HAL, "state_dir", t.cfg.StateDir,
		"control_socket", t.cfg.ControlSocket, "topic_root", t.cfg.TopicRoot)

	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		first error
	)
	start := func(name string, f func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f(ctx)
			if err != nil {
				err = fmt.Errorf("%s: %w", name, err)
				mu.Lock()
				if first == nil {
					first = err
				}
				mu.Unlock()
			}
			cancel() // one part stopping stops the thermostat
		}()
	}
	start("control loop", t.loop.Run)
	start("agent", func(ctx context.Context) error { return t.agent.Run(ctx, t.client) })
	start("broker connection", t.client.Run)
	start("certificate renewal", func(ctx context.Context) error { return t.renew.Run(ctx, t.client) })
	if t.ctl != nil {
		start("control socket", func(ctx context.Context) error { return t.ctl.Serve(ctx, t.agent) })
	}
	if t.metrics != nil {
		reg := metrics.New(metrics.Sources{Loop: t.loop, Agent: t.agent, Link: t.client})
		h := metrics.Handler(reg, t.log)
		t.log.Info("metrics at /metrics", "addr", t.metrics.Addr().String())
		// Not a part: a thermostat whose metrics listener fails heats on.
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := metrics.Serve(ctx, t.metrics, h, t.log); err != nil {
				t.log.Error("metrics stopped; the thermostat runs on without them", "err", err)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		t.log.Error("thermostat stopped", "err", first)
		return first
	}
	t.log.Info("thermostat stopped; outputs off")
	return nil
}

// close releases everything, the board last but one: its Close switches
// every output off whatever happened before.
func (t *Thermostat) close() {
	if t.ctl != nil {
		t.ctl.Close()
	}
	if t.metrics != nil {
		t.metrics.Close() // Serve closed it already if it ran: harmless
	}
	if t.board != nil {
		if err := t.board.Close(); err != nil {
			t.log.Error("closing the board", "err", err)
		}
		t.board = nil
	}
	if t.store != nil {
		t.store.Close()
		t.store = nil
	}
}
