package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/firmware/state"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/mttr/report"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// device is a thermostat in the harness: the firmware's agent and control
// loop on a simulated board, connected either through package transport
// (ours) or through a plain paho client on its defaults (the baseline).
type device struct {
	id     string
	client string // report.ClientOurs or report.ClientBaseline
	index  int

	agent *agent.Agent
	loop  *control.Loop
	store deviceStore
	// subscribed returns when the connection's subscriptions were last
	// acknowledged.
	subscribed func() time.Time
	// connected returns when the client's last connection was accepted
	// (its CONNACK; for the baseline, its subscription).
	connected func() time.Time

	mu     sync.Mutex
	losses []time.Time // every connection loss noticed

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// deviceOptions are what a device needs to run.
type deviceOptions struct {
	ID, Client                string
	Index                     int
	Dir                       string   // state directory
	BrokerURL                 string   // mqtts://HOST:PORT
	Failover                  []string // further brokers, tried in turn (a cluster's other nodes)
	CAFile, CertFile, KeyFile string
	KeepAlive                 time.Duration
	Logger                    *slog.Logger
	// MemoryState keeps the device's state in memory instead of a state
	// directory (see memoryStore).
	MemoryState bool
}

// deviceStore is what a device's state lives in: the firmware's state
// directory (package state), or memory.
type deviceStore interface {
	agent.Store
	Close() error
}

// memoryStore is the state of a simulated device kept in memory: no file,
// no fsync, no lock descriptor. The harness never restarts a device, so
// nothing would read the file back; what it leaves out is the cost of the
// write (an fsync on the board's own flash) and the one descriptor per
// device that the state directory's lock holds, which at 10,000 devices
// does not fit a 20,000-descriptor limit beside the connections.
type memoryStore struct {
	mu   sync.Mutex
	last protocol.DeviceState
}

func (m *memoryStore) Save(s protocol.DeviceState) error {
	m.mu.Lock()
	m.last = s
	m.mu.Unlock()
	return nil
}

func (m *memoryStore) Close() error { return nil }

// noteLoss records a connection loss noticed at now.
func (d *device) noteLoss(now time.Time) {
	d.mu.Lock()
	d.losses = append(d.losses, now)
	d.mu.Unlock()
}

// firstLossAfter returns the first loss at or after t.
func (d *device) firstLossAfter(t time.Time) (time.Time, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.losses {
		if !l.Before(t) {
			return l, true
		}
	}
	return time.Time{}, false
}

// startDevice builds and runs a device until stop.
func startDevice(o deviceOptions) (*device, error) {
	var st deviceStore
	var stored *protocol.DeviceState
	if o.MemoryState {
		st = &memoryStore{}
	} else {
		dst, err := state.Open(o.Dir)
		if err != nil {
			return nil, err
		}
		switch s, err := dst.Load(); {
		case errors.Is(err, state.ErrNoState):
		case err != nil:
			dst.Close()
			return nil, err
		default:
			stored = &s
		}
		st = dst
	}
	d := &device{id: o.ID, client: o.Client, index: o.Index, store: st}
	log := o.Logger.With("device", o.ID, "client", o.Client)

	board, err := sim.New(sim.Options{})
	if err != nil {
		st.Close()
		return nil, err
	}
	loop, err := control.New(control.DefaultConfig(), board, control.WithLogger(log))
	if err != nil {
		st.Close()
		return nil, err
	}
	a, err := agent.New(agent.Config{ID: o.ID, Store: st, Loop: loop, Clock: hal.SystemClock{}, Logger: log}, stored)
	if err != nil {
		st.Close()
		return nil, err
	}
	if err := loop.SetSettings(a.Settings()); err != nil {
		st.Close()
		return nil, err
	}
	loop.Notify(a.OutputsChanged, a.ButtonChange)
	loop.NotifyPresetButton(a.PresetButton)
	d.agent, d.loop = a, loop

	var conn agent.Conn
	var runConn func(context.Context)
	switch o.Client {
	case report.ClientOurs:
		var tc *transport.Client
		tc, err = transport.New(transport.Options{
			Broker: o.BrokerURL, Failover: o.Failover, CAFile: o.CAFile, CertFile: o.CertFile, KeyFile: o.KeyFile,
			KeepAlive: o.KeepAlive,
			Will:      a.Will(), Farewell: a.Farewell(),
			OnConnect: a.Connected,
			OnDisconnect: func(err error) {
				// When transport noticed, not when its dispatcher got
				// round to telling us.
				d.noteLoss(tc.Stats().LastLost)
				a.Disconnected(err)
			},
			Handler: a.Handle,
			Logger:  log,
		})
		if err != nil {
			st.Close()
			return nil, err
		}
		conn = tc
		d.subscribed = func() time.Time { return tc.Stats().LastSubscribed }
		d.connected = func() time.Time { return tc.Stats().LastConnected }
		runConn = func(ctx context.Context) { tc.Run(ctx) }
	case report.ClientBaseline:
		pc, err := newPahoConn(o, a, d)
		if err != nil {
			st.Close()
			return nil, err
		}
		conn = pc
		d.subscribed = pc.lastSubscribed
		d.connected = pc.lastSubscribed
		runConn = pc.run
	default:
		st.Close()
		return nil, fmt.Errorf("unknown client %q", o.Client)
	}

	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.wg.Add(3)
	go func() { defer d.wg.Done(); loop.Run(ctx) }()
	go func() {
		defer d.wg.Done()
		if err := a.Run(ctx, conn); err != nil {
			log.Error("agent stopped", "err", err)
		}
	}()
	go func() { defer d.wg.Done(); runConn(ctx) }()
	return d, nil
}

// stop ends the device cleanly.
func (d *device) stop() {
	if d.cancel != nil {
		d.cancel()
		d.wg.Wait()
		d.cancel = nil
	}
	d.store.Close()
}

// pahoConn is the baseline's connection: a paho.mqtt.golang client on its
// default options (auto-reconnect on, its own backoff and keep-alive
// handling, ping timeout 10 s, connect timeout 30 s, clean session), used
// the way its documentation and the field notes say a user must: the
// keep-alive the harness gives everyone, TLS, the will, and subscriptions
// renewed in the OnConnect handler (paho does not resubscribe by itself).
// It implements agent.Conn.
type pahoConn struct {
	c       mqtt.Client
	handler func(transport.Message)

	mu       sync.Mutex
	subs     map[string]byte
	subbedAt time.Time
}

// baselineClient describes the baseline in reports.
const baselineClient = "paho.mqtt.golang v1.5.1, default options"

// publishTimeout bounds the baseline's wait for an acknowledgement, as
// package transport's does: the agent needs every publish to end.
const publishTimeout = transport.DefaultPublishTimeout

func newPahoConn(o deviceOptions, a *agent.Agent, d *device) (*pahoConn, error) {
	u, err := transport.ParseBroker(o.BrokerURL)
	if err != nil {
		return nil, err
	}
	conf, err := provisioning.LoadClientTLS(o.CAFile, o.CertFile, o.KeyFile)
	if err != nil {
		return nil, err
	}
	conf.ServerName = u.Hostname()
	p := &pahoConn{handler: a.Handle, subs: map[string]byte{}}
	will := a.Will()
	opts := mqtt.NewClientOptions().
		AddBroker((&url.URL{Scheme: "ssl", Host: u.Host}).String()).
		SetClientID(o.ID).
		SetTLSConfig(conf).
		SetKeepAlive(o.KeepAlive).
		SetBinaryWill(will.Topic, will.Payload, will.QoS, will.Retained).
		SetOnConnectHandler(func(mqtt.Client) {
			if err := p.resubscribe(); err != nil {
				o.Logger.Warn("baseline: subscribe on connect", "device", o.ID, "err", err)
				return
			}
			a.Connected(context.Background(), nil)
		}).
		SetConnectionLostHandler(func(_ mqtt.Client, err error) {
			d.noteLoss(time.Now())
			a.Disconnected(err)
		})
	// A cluster's other nodes: paho tries its brokers in order on every
	// (re)connect.
	for _, f := range o.Failover {
		fu, err := transport.ParseBroker(f)
		if err != nil {
			return nil, err
		}
		opts.AddBroker((&url.URL{Scheme: "ssl", Host: fu.Host}).String())
	}
	p.c = mqtt.NewClient(opts)
	return p, nil
}

var _ agent.Conn = (*pahoConn)(nil)

func (p *pahoConn) receive(_ mqtt.Client, m mqtt.Message) {
	p.handler(transport.Message{Topic: m.Topic(), Payload: append([]byte(nil), m.Payload()...), QoS: m.Qos(), Retained: m.Retained()})
}

func (p *pahoConn) resubscribe() error {
	p.mu.Lock()
	subs := make(map[string]byte, len(p.subs))
	for f, q := range p.subs {
		subs[f] = q
	}
	p.mu.Unlock()
	if len(subs) > 0 {
		t := p.c.SubscribeMultiple(subs, p.receive)
		if !t.WaitTimeout(publishTimeout) {
			return errors.New("subscribe: no answer")
		}
		if err := t.Error(); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.subbedAt = time.Now()
	p.mu.Unlock()
	return nil
}

func (p *pahoConn) lastSubscribed() time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.subbedAt
}

// run connects (the broker is up when devices start) and, once ctx is
// done, disconnects.
func (p *pahoConn) run(ctx context.Context) {
	t := p.c.Connect()
	t.Wait()
	<-ctx.Done()
	p.c.Disconnect(250)
}

// Publish implements agent.Conn.
func (p *pahoConn) Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error {
	t := p.c.Publish(topic, qos, retain, payload)
	timer := time.NewTimer(publishTimeout)
	defer timer.Stop()
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return fmt.Errorf("publish %s: no acknowledgement in %v", topic, publishTimeout)
	}
}

// Subscribe implements agent.Conn.
func (p *pahoConn) Subscribe(filter string, qos byte) error {
	p.mu.Lock()
	p.subs[filter] = qos
	p.mu.Unlock()
	if !p.c.IsConnectionOpen() {
		return nil
	}
	t := p.c.Subscribe(filter, qos, p.receive)
	if !t.WaitTimeout(publishTimeout) {
		return errors.New("subscribe: no answer")
	}
	return t.Error()
}

// Unsubscribe implements agent.Conn.
func (p *pahoConn) Unsubscribe(filter string) error {
	p.mu.Lock()
	delete(p.subs, filter)
	p.mu.Unlock()
	if !p.c.IsConnectionOpen() {
		return nil
	}
	t := p.c.Unsubscribe(filter)
	if !t.WaitTimeout(publishTimeout) {
		return errors.New("unsubscribe: no answer")
	}
	return t.Error()
}

// Connected implements agent.Conn.
func (p *pahoConn) Connected() bool { return p.c.IsConnectionOpen() }
