// Package harness is the mttr harness: it runs a broker, a real
// controllerlite and a fleet of real thermostat agents on simulated
// boards, faults the broker again and again, and measures how each device
// recovers, against a baseline of the same agents on a plain
// paho.mqtt.golang client with its default options, in the same run.
//
// One cycle: the broker is faulted (killed, hung with SIGSTOP, or cut off
// by a network partition); during the outage every device makes two local
// changes (setpoint and mode, then setpoint again) and the controller
// changes every device's mode, concurrently with the device's own mode
// change; then the broker comes back and the harness records, per device,
//   - detection: fault to the client noticing it lost the broker;
//   - reconnect: broker accepting again to the client connected and
//     subscribed;
//   - resync: broker accepting again to the controller holding every
//     local change the device made in the outage (the recovery time);
//   - lost events: local changes the controller never got;
//   - wrong winners: concurrent conflicts the device's write did not win,
//     judged from the stamps by the rules of PROTOCOL.md;
//
// and checks that device and controller end the cycle in agreement. The
// broker then runs for --keep-running before the next fault.
package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/mttr/brokerctl"
	"github.com/thermofleet/thermo/mttr/procstat"
	"github.com/thermofleet/thermo/mttr/report"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// Fault modes.
const (
	FaultKill      = "kill"
	FaultHang      = "hang"
	FaultPartition = "partition"
)

// Brokers.
const (
	BrokerMosquitto = "mosquitto"
	BrokerAedes     = "aedes"
	BrokerEmbedded  = "embedded"
	BrokerExternal  = "external"
)

// MaxDevices bounds --devices and --baseline-devices: each device holds
// two file descriptors in the harness (its connection and its state
// directory's lock) and one in the broker; see RaiseFileLimit.
const MaxDevices = 10000

// pollEvery is how often the harness looks at the controller and the
// devices while it waits for them (10 ms through the HTTP API).
const pollEvery = 5 * time.Millisecond

// pollPerDevice spaces the polls of a big fleet (see setup).
const pollPerDevice = 10 * time.Microsecond

// Config is one run of the harness.
type Config struct {
	// Broker is mosquitto, aedes, embedded or external.
	Broker string
	// Faults are the fault modes to play, in order, with their cycles.
	Faults []report.Plan
	// KeepAlive is the MQTT keep-alive every client uses.
	KeepAlive time.Duration
	// FactorOfKeepAlive: a killed broker stays down factor × keep-alive.
	FactorOfKeepAlive float64
	// KeepRunning is how long the broker runs between faults.
	KeepRunning time.Duration
	// KeepDead is how long a hang or a partition lasts.
	KeepDead time.Duration
	// MaxRecovery bounds a cycle's wait for every device to recover;
	// devices still out of sync then are counted unrecovered.
	MaxRecovery time.Duration
	// Devices run our transport; BaselineDevices the plain paho client.
	Devices, BaselineDevices int
	// WorkDir holds the PKI, the broker's files, device state and logs.
	WorkDir string
	// DeviceDir holds the devices' state directories (default
	// WORK-DIR/devices). On a tmpfs (/dev/shm) the simulated devices'
	// fsyncs leave the disk the broker and the controller use: a real
	// board has a disk of its own, and thousands of boards sharing one
	// queue of fsyncs measured the disk, not the fleet.
	DeviceDir string
	// MemoryState keeps every device's state in memory rather than in a
	// state directory: no fsync and no lock descriptor per device, for
	// runs of thousands (see memoryStore).
	MemoryState bool
	// AedesDir is brokers/aedes, with its node modules installed.
	AedesDir string
	// Nodes, Instances and Lease shape the cluster (--broker
	// aedes-cluster, cluster.go): broker nodes, controller instances and
	// their lease.
	Nodes, Instances int
	Lease            time.Duration
	// EmbeddedCmd is a command taking `controllerlite serve` flags that
	// runs controllerlite with its embedded broker, e.g.
	// ["bin/controllerlite", "serve"], or the mttr binary's own
	// ["mttr", "embedded-serve"].
	EmbeddedCmd []string
	// ControllerProcess runs the controller as a process of its own
	// (EmbeddedCmd with --broker) rather than in the harness, with
	// --broker mosquitto, aedes or external: its CPU and memory are
	// then measured apart from the simulated devices'.
	ControllerProcess bool
	// External is the user's broker, for Broker "external": its address
	// (mqtts://HOST:PORT) and the commands that take it down and up.
	External brokerctl.External
	// ExternalPKI is the directory of the CA (ca.crt, ca.key) the external
	// broker trusts: device and controller certificates are issued from it.
	ExternalPKI string
	// Progress receives the progress line and the table of cycles; TTY
	// says it is a terminal, where the progress line rewrites itself.
	Progress io.Writer
	TTY      bool
	// Logger receives the components' logs (agents, transport,
	// controllerlite).
	Logger *slog.Logger
	// Command and Version are recorded in the result.
	Command, Version string
}

// DownTime is how long a killed broker stays down.
func (c Config) DownTime() time.Duration {
	return time.Duration(c.FactorOfKeepAlive * float64(c.KeepAlive))
}

func (c *Config) check() error {
	switch c.Broker {
	case BrokerMosquitto, BrokerAedes, BrokerEmbedded, BrokerExternal, BrokerAedesCluster:
	default:
		return fmt.Errorf("--broker %q: want mosquitto, aedes, embedded, external or aedes-cluster", c.Broker)
	}
	if len(c.Faults) == 0 {
		return errors.New("no fault to play")
	}
	for _, p := range c.Faults {
		isCluster := slices.Contains(clusterFaults, p.Fault)
		switch {
		case c.Broker == BrokerAedesCluster && !isCluster:
			return fmt.Errorf("--fault %q: with --broker aedes-cluster, want %s", p.Fault, strings.Join(clusterFaults, ", "))
		case c.Broker != BrokerAedesCluster && isCluster:
			return fmt.Errorf("--fault %q needs --broker aedes-cluster", p.Fault)
		case !isCluster && p.Fault != FaultKill && p.Fault != FaultHang && p.Fault != FaultPartition:
			return fmt.Errorf("--fault %q: want kill, hang or partition (or, with --broker aedes-cluster, %s)", p.Fault, strings.Join(clusterFaults, ", "))
		}
		if p.Cycles < 1 {
			return fmt.Errorf("--fault %s: %d cycles: want at least 1", p.Fault, p.Cycles)
		}
	}
	if err := transport.CheckKeepAlive(c.KeepAlive); err != nil {
		return fmt.Errorf("--keep-alive %v: %w", c.KeepAlive, err)
	}
	if c.FactorOfKeepAlive <= 0 || math.IsNaN(c.FactorOfKeepAlive) || math.IsInf(c.FactorOfKeepAlive, 0) {
		return fmt.Errorf("--factor-of-keep-alive %v: want a positive number", c.FactorOfKeepAlive)
	}
	if c.DownTime() < 100*time.Millisecond {
		return fmt.Errorf("down time %v (factor × keep-alive) is too short to make changes in", c.DownTime())
	}
	if c.KeepDead < 100*time.Millisecond {
		return fmt.Errorf("--keep-dead %v is too short to make changes in", c.KeepDead)
	}
	if c.KeepRunning <= 0 {
		return fmt.Errorf("--keep-running %v: want a positive duration", c.KeepRunning)
	}
	c.MaxRecovery = max(c.MaxRecovery, c.KeepRunning)
	if c.Devices < 1 || c.Devices > MaxDevices {
		return fmt.Errorf("--devices %d: want 1 to %d", c.Devices, MaxDevices)
	}
	if c.BaselineDevices < 0 || c.BaselineDevices > MaxDevices {
		return fmt.Errorf("--baseline-devices %d: want 0 to %d", c.BaselineDevices, MaxDevices)
	}
	if c.WorkDir == "" {
		return errors.New("no work directory")
	}
	if c.Broker == BrokerExternal {
		if c.External.Address == "" || c.ExternalPKI == "" {
			return errors.New("--broker external needs --external-addr mqtts://HOST:PORT and --external-pki DIR (the CA it trusts)")
		}
	}
	if (c.Broker == BrokerEmbedded || c.Broker == BrokerAedesCluster) && len(c.EmbeddedCmd) == 0 {
		return fmt.Errorf("--broker %s needs a command that runs controllerlite serve", c.Broker)
	}
	if c.ControllerProcess {
		switch {
		case c.Broker == BrokerEmbedded:
			return errors.New("--controller-process: with --broker embedded the controller already runs in the broker's process")
		case c.Broker == BrokerAedesCluster:
			return errors.New("--controller-process: with --broker aedes-cluster the controllers already run as processes of their own")
		case len(c.EmbeddedCmd) == 0:
			return errors.New("--controller-process needs a command that runs controllerlite serve")
		}
	}
	if c.Broker == BrokerAedesCluster {
		if err := c.checkCluster(); err != nil {
			return err
		}
	}
	if c.Progress == nil {
		c.Progress = io.Discard
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return nil
}

// run is the state of one harness run.
type run struct {
	cfg    Config
	log    *slog.Logger
	out    *progress
	pki    *pki
	ns     *brokerctl.NetNS
	broker brokerctl.Broker
	ctrl   controller
	cl     *cluster // --broker aedes-cluster
	// ctrlProc is the controller's own process (--controller-process).
	ctrlProc *brokerctl.Process
	// sampler reads the processes' CPU and memory; steady are the
	// cycles' steady windows (resources.go).
	sampler *procstat.Sampler
	steady  []steadyWindow
	returns []returnWindow
	devs    []*device
	res     *report.Result
	// brokerURL is what the clients dial.
	brokerURL string
	// poll is how often the controller is polled.
	poll time.Duration
}

// Run plays the configured cycles and returns the result. An error means
// the harness could not run or go on (a broker that does not start, no
// certificates...); the result then holds the cycles played before it (nil
// only for an invalid configuration). A missed target or a lost event is
// in the result, not an error. Modes this machine cannot play (a
// partition without root) are skipped and listed in the result.
func Run(ctx context.Context, cfg Config) (*report.Result, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	r := &run{cfg: cfg, log: cfg.Logger, out: &progress{w: cfg.Progress, tty: cfg.TTY}, poll: pollEvery}
	r.res = &report.Result{
		Tool:    strings.TrimSpace("mttr " + cfg.Version),
		Command: cfg.Command,
		Machine: fmt.Sprintf("%s/%s, %d CPUs, %s", runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), runtime.Version()),
		Started: time.Now().UTC(),
		Config: report.Config{
			Broker: cfg.Broker, KeepAliveS: report.Dur(cfg.KeepAlive), FactorOfKeepAlive: cfg.FactorOfKeepAlive,
			DownS: report.Dur(cfg.DownTime()), KeepDeadS: report.Dur(cfg.KeepDead), KeepRunningS: report.Dur(cfg.KeepRunning),
			MaxRecoveryS: report.Dur(cfg.MaxRecovery), Devices: cfg.Devices, BaselineDevices: cfg.BaselineDevices,
			ControllerProcess: cfg.ControllerProcess,
		},
	}
	if cfg.Broker == BrokerAedesCluster {
		r.res.Config.Nodes, r.res.Config.Instances, r.res.Config.LeaseS = cfg.Nodes, cfg.Instances, report.Dur(cfg.Lease)
	}
	if cfg.BaselineDevices > 0 {
		r.res.Config.BaselineClient = baselineClient
	}
	r.cfg.Faults = r.playable()
	r.res.Config.Faults = r.cfg.Faults
	var err error
	if len(r.cfg.Faults) > 0 {
		r.startSampling()
		err = r.play(ctx)
		r.res.Resources = r.resources()
	}
	// The cycles played so far are the result, even after an error.
	r.teardown()
	r.res.Finished = time.Now().UTC()
	r.res.Finish()
	r.res.Targets = r.res.CheckTargets(cfg.KeepAlive, cfg.KeepDead)
	return r.res, err
}

// play sets up and plays every cycle.
func (r *run) play(ctx context.Context) error {
	if err := r.setup(ctx); err != nil {
		return err
	}
	n, total := 0, 0
	for _, p := range r.cfg.Faults {
		total += p.Cycles
	}
	r.out.line(report.CycleHeader(r.cfg.BaselineDevices > 0))
	for _, p := range r.cfg.Faults {
		for i := 0; i < p.Cycles; i++ {
			n++
			c, err := r.cycle(ctx, n, total, p.Fault)
			if err != nil {
				return fmt.Errorf("cycle %d (%s): %w", n, p.Fault, err)
			}
			c.Ours = report.Summarize(c.Samples, report.ClientOurs)
			if r.cfg.BaselineDevices > 0 {
				b := report.Summarize(c.Samples, report.ClientBaseline)
				c.Baseline = &b
			}
			r.res.Cycles = append(r.res.Cycles, c)
			r.out.line(report.CycleLine(c))
		}
	}
	return nil
}

// playable drops the fault modes this machine or broker cannot play, and
// says why in the result.
func (r *run) playable() []report.Plan {
	var out []report.Plan
	for _, p := range r.cfg.Faults {
		if p.Fault == FaultPartition {
			why := ""
			if r.cfg.Broker == BrokerExternal {
				why = "the harness cannot cut the network of a broker it does not run"
			} else if err := brokerctl.NetNSAvailable(); err != nil {
				why = err.Error()
			}
			if why != "" {
				msg := fmt.Sprintf("partition (%d cycles): %s; run as root with iproute2 (ip netns) to play it", p.Cycles, why)
				r.res.Skipped = append(r.res.Skipped, msg)
				r.out.line("skipped: " + msg)
				continue
			}
		}
		out = append(out, p)
	}
	return out
}

// setup issues the PKI, starts the broker, the controller and the
// devices, and waits until every device is in sync with the controller.
func (r *run) setup(ctx context.Context) error {
	cfg := r.cfg
	if err := os.MkdirAll(cfg.WorkDir, 0o700); err != nil {
		return err
	}
	needNS := slices.ContainsFunc(cfg.Faults, func(p report.Plan) bool { return p.Fault == FaultPartition })
	host, port, httpAddr := "127.0.0.1", 0, ""
	if needNS {
		var err error
		if r.ns, err = newNetNS(); err != nil {
			return fmt.Errorf("partition: %w", err)
		}
		host, port, httpAddr = r.ns.BrokerIP, 8883, net.JoinHostPort(r.ns.ControlIP, "8080")
	}
	var err error
	if cfg.Broker == BrokerAedesCluster {
		return r.setupCluster(ctx)
	}
	r.out.status("issuing certificates for %d devices", cfg.Devices+cfg.BaselineDevices)
	if cfg.Broker == BrokerExternal {
		r.pki, err = loadPKI(cfg.ExternalPKI, filepath.Join(cfg.WorkDir, "pki"))
	} else {
		r.pki, err = newPKI(filepath.Join(cfg.WorkDir, "pki"), host)
	}
	if err != nil {
		return err
	}
	if cfg.Broker != BrokerExternal && port == 0 {
		if port, err = brokerctl.FreePort(host); err != nil {
			return err
		}
	}
	if cfg.Broker == BrokerEmbedded && httpAddr == "" {
		hp, err := brokerctl.FreePort("127.0.0.1")
		if err != nil {
			return err
		}
		httpAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(hp))
	}
	bo := brokerctl.Options{Dir: filepath.Join(cfg.WorkDir, cfg.Broker), Host: host, Port: port,
		CAFile: r.pki.caFile, CertFile: r.pki.serverCert, KeyFile: r.pki.serverKey, NetNS: r.ns}
	switch cfg.Broker {
	case BrokerMosquitto:
		r.broker, err = brokerctl.Mosquitto(bo)
	case BrokerAedes:
		r.broker, err = brokerctl.Aedes(cfg.AedesDir, bo)
	case BrokerEmbedded:
		r.broker, err = brokerctl.Embedded(cfg.EmbeddedCmd, httpAddr, r.pki.tokenFile, bo)
	case BrokerExternal:
		ext := cfg.External
		u, perr := transport.ParseBroker(ext.Address)
		if perr != nil {
			return perr
		}
		ext.Address = u.Host
		if ext.Log == nil {
			ext.Log = logWriter{r.log.With("part", "external")}
		}
		r.broker = &ext
	}
	if err != nil {
		return err
	}
	r.brokerURL = "mqtts://" + r.broker.Addr()
	r.out.status("starting %s at %s", cfg.Broker, r.broker.Addr())
	if p, ok := r.broker.(*brokerctl.Process); ok {
		r.watchProcess("broker", brokerRole(cfg.Broker), p)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	_, err = r.broker.Start(sctx)
	cancel()
	if err != nil {
		return err
	}

	switch {
	case cfg.Broker == BrokerEmbedded:
		r.ctrl, err = newRemoteController(httpAddr, r.pki.token)
		r.poll = 2 * pollEvery
	case cfg.ControllerProcess:
		r.ctrlProc, r.ctrl, err = r.startControllerProcess(ctx)
		if r.ctrlProc != nil {
			r.watchProcess("controller", "controllerlite serve --broker: the controller", r.ctrlProc)
		}
		r.poll = 2 * pollEvery
	default:
		cert, key, cerr := r.pki.client(protocol.ControllerID)
		if cerr != nil {
			return cerr
		}
		r.ctrl, err = startLocalController(r.brokerURL, r.pki.caFile, cert, key, filepath.Join(cfg.WorkDir, "controller"), cfg.KeepAlive, r.log)
	}
	if err != nil {
		return err
	}
	// Each poll looks at every device as the controller's change feed
	// left it (feed.go: the live feed of its HTTP API, or the in-process
	// fleet's Watch), stamped with when each change arrived, so a resync
	// is timed from the change, not from the poll. Polls are still spaced
	// 10 µs per device at least (100 ms at 10,000): each compares every
	// device's state, CPU the devices and the controller need.
	r.poll = max(r.poll, time.Duration(cfg.Devices+cfg.BaselineDevices)*pollPerDevice)

	return r.startDevices(ctx, nil)
}

// startDevices starts the devices, each dialling r.brokerURL, or with
// nodes the node of its index first and the others after, and waits until
// they are in sync with the controller.
func (r *run) startDevices(ctx context.Context, nodes []string) error {
	cfg := r.cfg
	r.out.status("starting %d devices and %d baseline devices", cfg.Devices, cfg.BaselineDevices)
	deviceDir := cfg.DeviceDir
	if deviceDir == "" {
		deviceDir = filepath.Join(cfg.WorkDir, "devices")
	}
	for i := 0; i < cfg.Devices+cfg.BaselineDevices; i++ {
		client, id := report.ClientOurs, fmt.Sprintf("dev-%04d", i)
		if i >= cfg.Devices {
			client, id = report.ClientBaseline, fmt.Sprintf("base-%04d", i-cfg.Devices)
		}
		cert, key, err := r.pki.client(id)
		if err != nil {
			return err
		}
		brokerURL, failover := r.brokerURL, []string(nil)
		for j := range nodes {
			if u := nodes[(i+j)%len(nodes)]; j == 0 {
				brokerURL = u
			} else {
				failover = append(failover, u)
			}
		}
		d, err := startDevice(deviceOptions{
			ID: id, Client: client, Index: i, Dir: filepath.Join(deviceDir, id),
			BrokerURL: brokerURL, Failover: failover, CAFile: r.pki.caFile, CertFile: cert, KeyFile: key,
			KeepAlive: cfg.KeepAlive, Logger: r.log, MemoryState: cfg.MemoryState,
		})
		if err != nil {
			return fmt.Errorf("device %s: %w", id, err)
		}
		r.devs = append(r.devs, d)
	}
	return r.warmUp(ctx)
}

// warmUp waits until every device is connected, done with its first-boot
// rejoin and in agreement with the controller.
func (r *run) warmUp(ctx context.Context) error {
	start := time.Now()
	deadline := start.Add(60*time.Second + time.Duration(len(r.devs))*100*time.Millisecond)
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		view, err := r.ctrl.devices(ctx)
		ready := 0
		var waiting string
		if err == nil {
			for _, d := range r.devs {
				s := d.agent.Snapshot()
				c, ok := view[d.id]
				switch {
				case !s.Connected:
					waiting = d.id + " to connect"
				case s.Rejoining:
					waiting = d.id + " to finish its first-boot rejoin"
				case !ok:
					waiting = "the controller to see " + d.id
				case difference(s.Props, c.Props) != "":
					waiting = d.id + " and the controller to agree: " + difference(s.Props, c.Props)
				default:
					ready++
					continue
				}
			}
		} else {
			waiting = "the controller: " + err.Error()
		}
		if ready == len(r.devs) {
			r.out.status("all %d devices in sync with the controller", ready)
			return nil
		}
		r.out.status("warming up: %d/%d devices in sync", ready, len(r.devs))
		if time.Now().After(deadline) {
			return fmt.Errorf("warm-up: after %v, %d of %d devices in sync; still waiting for %s", time.Since(start).Round(time.Second), ready, len(r.devs), waiting)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// teardown stops everything setup started.
func (r *run) teardown() {
	r.out.status("stopping")
	var wg sync.WaitGroup
	for _, d := range r.devs {
		wg.Add(1)
		go func() { defer wg.Done(); d.stop() }()
	}
	wg.Wait()
	if r.ctrl != nil {
		r.ctrl.close()
	}
	if r.ctrlProc != nil {
		r.ctrlProc.Stop()
	}
	if r.broker != nil {
		r.broker.Stop()
	}
	if r.cl != nil {
		r.cl.stop()
	}
	if r.ns != nil {
		r.ns.Close()
	}
	r.out.done()
}

// track follows one device through a cycle.
type track struct {
	d     *device
	local []write

	mu         sync.Mutex
	ctrlWrites []write
	ctrlErr    error

	resyncAt  time.Time
	converged bool
	// from is what the resync is measured from: the broker's (the
	// part's) return, or for a failover fault the device's last local
	// change (failoverFault).
	from time.Time
}

// values are the changes of one device in cycle n: distinct from cycle to
// cycle and device to device, all valid.
func values(index, n int) (s1, s2 float64, devMode, ctrlMode string) {
	base := 5 + float64((index*37+n*11)%280)/10
	s1 = protocol.RoundSetpoint(base)
	s2 = protocol.RoundSetpoint(base + 2)
	devMode = protocol.Modes[(index+n)%len(protocol.Modes)]
	ctrlMode = protocol.Modes[(index+n+1)%len(protocol.Modes)]
	return
}

// cycle plays one fault and measures the recovery.
func (r *run) cycle(ctx context.Context, n, total int, fault string) (report.Cycle, error) {
	down := r.cfg.KeepDead
	if fault == FaultKill {
		down = r.cfg.DownTime()
	}
	tracks := make([]*track, len(r.devs))
	for i, d := range r.devs {
		tracks[i] = &track{d: d}
	}
	label := fmt.Sprintf("cycle %d/%d %s", n, total, fault)

	// The fault.
	tFault := time.Now()
	var err error
	var fail *failure
	switch fault {
	case FaultKill:
		err = r.broker.Kill(ctx)
	case FaultHang:
		err = r.broker.Pause(ctx)
	case FaultPartition:
		err = r.ns.Cut()
	default:
		fail, err = r.inject(ctx, fault, n, tFault)
	}
	if err != nil {
		return report.Cycle{}, err
	}

	// Changes during the outage, at fixed points of it: for a failover
	// fault early, while the failover is under way, for the others
	// spread through the outage.
	at := [3]time.Duration{down / 4, down * 2 / 5, down * 3 / 5}
	early := failoverFault(fault)
	if early {
		at = [3]time.Duration{down / 20, down / 10, down / 5}
	}
	var writers sync.WaitGroup
	setCtx, cancelSets := context.WithTimeout(ctx, down+r.cfg.MaxRecovery)
	defer cancelSets()
	outage := []struct {
		at time.Duration
		do func()
	}{
		{at[0], func() { r.localWrites(ctx, tracks, n, 1) }},
		{at[1], func() {
			for _, t := range tracks {
				writers.Add(1)
				go func() { defer writers.Done(); r.controllerWrite(setCtx, t, n) }()
			}
		}},
		{at[2], func() {
			r.localWrites(ctx, tracks, n, 2)
			if early {
				// The devices' changes reach the controller through
				// the failover: watched from now.
				fail.watchResync(ctx, r, tracks)
			}
		}},
	}
	for _, step := range outage {
		if err := r.waitUntil(ctx, tFault.Add(step.at), func() string {
			return fmt.Sprintf("%s: broker down %s/%s · %s", label, fmtDur(time.Since(tFault)), fmtDur(down), r.lossCount(tracks, tFault))
		}); err != nil {
			return report.Cycle{}, err
		}
		step.do()
	}
	if err := r.waitUntil(ctx, tFault.Add(down), func() string {
		return fmt.Sprintf("%s: broker down %s/%s · %s", label, fmtDur(time.Since(tFault)), fmtDur(down), r.lossCount(tracks, tFault))
	}); err != nil {
		return report.Cycle{}, err
	}

	// The broker (the part) comes back.
	var tUp time.Time
	var failover *report.Failover
	if fail != nil {
		// What the failover took is measured up to here: the part's
		// return would end it anyway.
		failover = r.finish(fail, tracks, tFault)
		err = fail.restore(ctx)
		tUp = time.Now()
	}
	switch fault {
	case FaultKill:
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		tUp, err = r.broker.Start(sctx)
		cancel()
	case FaultHang:
		err = r.broker.Resume(ctx)
		tUp = time.Now()
	case FaultPartition:
		err = r.ns.Heal()
		tUp = time.Now()
	}
	if err != nil {
		return report.Cycle{}, err
	}
	for _, t := range tracks {
		if !early || t.from.IsZero() {
			t.from = tUp
		}
	}

	// Recovery.
	setsDone := make(chan struct{})
	go func() { writers.Wait(); close(setsDone) }()
	end, err := r.recover(ctx, label, tracks, tUp, setsDone)
	if err != nil {
		return report.Cycle{}, err
	}
	// The probe that saw the broker accept again runs in this process,
	// beside thousands of devices: under that load it was seen to wake up
	// seconds late (reconnect times came out negative). A device that got
	// a connection proves the broker accepted by then: the earlier of the
	// two is the broker's return. Resyncs are timed from it too: timed
	// from the late probe while reconnections were timed from the first
	// device, a cycle came out with every resync before its device's
	// reconnection, seconds too short (session 8).
	if first, ok := r.firstConnect(tracks, tFault); ok && first.Before(tUp) && fail == nil {
		r.log.Warn("the broker accepted connections before the harness's probe noticed: return taken from the first device connected",
			"probe", tUp.UTC(), "first_device", first.UTC(), "late_by", tUp.Sub(first))
		for _, t := range tracks {
			if t.from.Equal(tUp) {
				t.from = first
			}
		}
		tUp = first
	}
	// Let every Set end before judging: a write still in flight would
	// be judged without its stamp.
	select {
	case <-setsDone:
	case <-setCtx.Done():
	}

	c := report.Cycle{N: n, Fault: fault, FaultAt: tFault.UTC(), UpAt: tUp.UTC(), DownS: report.Dur(tUp.Sub(tFault)), Failover: failover}
	if lc, ok := r.ctrl.(*localController); ok {
		link := &report.Link{DetectS: report.NaN, ReconnectS: report.NaN}
		if at, ok := lc.firstFlip(false, tFault); ok {
			link.DetectS = report.Dur(at.Sub(tFault))
			if up, ok := lc.firstFlip(true, at); ok {
				link.ReconnectS = report.Dur(up.Sub(tUp))
			}
		}
		c.Controller = link
	}
	view, err := r.ctrl.devices(ctx)
	if err != nil {
		return report.Cycle{}, fmt.Errorf("read the controller: %w", err)
	}
	// Reconnection is measured from the broker's return, or for a
	// failover fault from the fault (the other nodes never left).
	back := tUp
	if early {
		back = tFault
	}
	for _, t := range tracks {
		c.Samples = append(c.Samples, r.sample(t, view[t.d.id].Props, tFault, back, end))
	}

	// What the return cost: from the broker's return to the recovery's end.
	r.noteReturn(n, tUp, end, c.Samples)
	// The broker runs before the next fault: the last half of it, after
	// the recovery, is the cycle's steady state.
	r.noteSteady(n, tUp)
	if err := r.waitUntil(ctx, tUp.Add(r.cfg.KeepRunning), func() string {
		return fmt.Sprintf("%s: recovered; broker running %s/%s", label, fmtDur(time.Since(tUp)), fmtDur(r.cfg.KeepRunning))
	}); err != nil {
		return report.Cycle{}, err
	}
	return c, nil
}

// firstConnect returns the earliest connection any device made after the
// fault.
func (r *run) firstConnect(tracks []*track, tFault time.Time) (time.Time, bool) {
	var first time.Time
	for _, t := range tracks {
		if c := t.d.connected(); c.After(tFault) && (first.IsZero() || c.Before(first)) {
			first = c
		}
	}
	return first, !first.IsZero()
}

// localWrites makes the step-th local change of cycle n on every device.
func (r *run) localWrites(ctx context.Context, tracks []*track, n, step int) {
	var wg sync.WaitGroup
	for _, t := range tracks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s1, s2, mode, _ := values(t.d.index, n)
			changes := map[string]any{protocol.PropSetpoint: s1, protocol.PropMode: mode}
			if step == 2 {
				changes = map[string]any{protocol.PropSetpoint: s2}
			}
			wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if err := t.d.agent.Set(wctx, changes); err != nil {
				r.log.Error("local change refused", "device", t.d.id, "changes", changes, "err", err)
				return
			}
			// The device's write stamp, read back at once: nothing else
			// reaches the device during the outage.
			s := t.d.agent.Snapshot()
			w := s.Props[protocol.PropSetpoint].W
			t.mu.Lock()
			t.local = append(t.local, write{Props: changes, W: w})
			t.from = time.Now()
			t.mu.Unlock()
		}()
	}
	wg.Wait()
}

// controllerWrite is a remote user's change of the device's mode.
func (r *run) controllerWrite(ctx context.Context, t *track, n int) {
	_, _, _, mode := values(t.d.index, n)
	changes := map[string]any{protocol.PropMode: mode}
	d, err := r.ctrl.set(ctx, t.d.id, changes)
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.ctrlErr = err
		r.log.Warn("controller change failed", "device", t.d.id, "err", err)
		return
	}
	t.ctrlWrites = append(t.ctrlWrites, write{Props: changes, W: d.Props[protocol.PropMode].W})
}

// recover polls the devices and the controller from the moment the broker
// is back until every device has resynced and agrees with the controller
// (and the controller's writes are done), or MaxRecovery has passed. It
// returns when it stopped waiting. It polls fast while devices come back
// and slower after a few seconds, so that the harness does not take the CPU
// the controller and the devices need.
func (r *run) recover(ctx context.Context, label string, tracks []*track, tUp time.Time, setsDone <-chan struct{}) (time.Time, error) {
	deadline := tUp.Add(r.cfg.MaxRecovery)
	lastStatus := time.Time{}
	setsOver := false
	for {
		now := time.Now()
		if !setsOver {
			select {
			case <-setsDone:
				// A write that landed late may still be on its way to
				// its device: look at every device again.
				setsOver = true
				for _, tr := range tracks {
					tr.converged = false
				}
			default:
			}
		}
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		view, err := r.ctrl.devices(qctx)
		cancel()
		pending := 0
		var oursLeft, baseLeft int
		for _, tr := range tracks {
			if err == nil && !tr.converged {
				tr.observe(view[tr.d.id].Props, view[tr.d.id].when(now))
			}
			if !tr.converged {
				pending++
				if tr.d.client == report.ClientOurs {
					oursLeft++
				} else {
					baseLeft++
				}
			}
		}
		if pending == 0 && setsOver {
			return now, nil
		}
		if now.After(deadline) {
			return now, nil
		}
		if now.Sub(lastStatus) > 200*time.Millisecond {
			lastStatus = now
			r.out.status("%s: broker back %s ago · waiting for %d ours and %d baseline devices to resync", label, fmtDur(now.Sub(tUp)), oursLeft, baseLeft)
		}
		wait := r.poll
		if now.Sub(tUp) > 3*time.Second {
			wait = 10 * r.poll
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return now, ctx.Err()
		case <-t.C:
		}
	}
}

// observe notes when the controller first holds every local change (at,
// when the harness learned the controller's state), and whether the
// device and the controller agree now (once they hold it).
func (t *track) observe(ctrl protocol.Props, at time.Time) {
	t.mu.Lock()
	local := t.local
	t.mu.Unlock()
	if t.resyncAt.IsZero() && resynced(local, ctrl) {
		t.resyncAt = at
	}
	t.converged = !t.resyncAt.IsZero() && difference(t.d.agent.Snapshot().Props, ctrl) == ""
}

// sample turns a device's cycle into its measurements and verdict.
func (r *run) sample(t *track, ctrl protocol.Props, tFault, tUp, end time.Time) report.Sample {
	s := report.Sample{Device: t.d.id, Client: t.d.client, DetectS: report.NaN, ReconnectS: report.NaN}
	if loss, ok := t.d.firstLossAfter(tFault); ok && loss.Before(end) {
		s.DetectS = report.Dur(loss.Sub(tFault))
		if sub := t.d.subscribed(); sub.After(loss) {
			s.ReconnectS = report.Dur(sub.Sub(tUp))
		}
	}
	if t.resyncAt.IsZero() {
		s.ResyncS = report.Dur(end.Sub(t.from))
	} else {
		s.ResyncS = report.Dur(t.resyncAt.Sub(t.from))
		s.Recovered = true
	}
	t.mu.Lock()
	local, ctrlWrites, ctrlErr := t.local, t.ctrlWrites, t.ctrlErr
	t.mu.Unlock()
	snap := t.d.agent.Snapshot()
	v := judge(local, ctrlWrites, snap.Props, ctrl)
	s.LocalChanges, s.LostEvents, s.Conflicts, s.WrongWinners, s.Diverged = v.LocalChanges, v.Lost, v.Conflicts, v.Wrong, v.Diverged
	notes := v.Notes
	if !s.Recovered && !snap.Connected {
		// Still offline: its changes may yet arrive and its conflicts
		// are undecided. Late, not lost or wrong; a device that is back
		// and still has not delivered them lost them.
		s.LateEvents, s.LostEvents, s.WrongWinners, s.Diverged = s.LostEvents, 0, 0, false
		notes = []string{"still offline when the cycle stopped waiting: its changes are late, its conflicts undecided"}
	}
	if ctrlErr != nil {
		notes = append(notes, "controller change failed: "+ctrlErr.Error())
	}
	if !s.Recovered && snap.Connected {
		notes = append(notes, "connected but not resynced when the cycle stopped waiting")
	}
	s.Note = strings.Join(notes, "; ")
	if s.Note != "" && t.d.client == report.ClientOurs {
		r.log.Warn("device cycle", "device", t.d.id, "note", s.Note)
	}
	return s
}

// lossCount says how many devices have noticed the outage.
func (r *run) lossCount(tracks []*track, tFault time.Time) string {
	ours, base := 0, 0
	for _, t := range tracks {
		if _, ok := t.d.firstLossAfter(tFault); ok {
			if t.d.client == report.ClientOurs {
				ours++
			} else {
				base++
			}
		}
	}
	s := fmt.Sprintf("%d/%d ours noticed", ours, r.cfg.Devices)
	if r.cfg.BaselineDevices > 0 {
		s += fmt.Sprintf(", %d/%d baseline", base, r.cfg.BaselineDevices)
	}
	return s
}

// waitUntil waits for a moment, updating the progress line.
func (r *run) waitUntil(ctx context.Context, at time.Time, status func() string) error {
	for {
		d := time.Until(at)
		if d <= 0 {
			return nil
		}
		r.out.status("%s", status())
		timer := time.NewTimer(min(d, 200*time.Millisecond))
		select {
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		case <-timer.C:
		}
	}
}

func fmtDur(d time.Duration) string { return report.FormatSeconds(report.Dur(d)) }

// newNetNS makes the namespace for a partition, on a subnet free here.
func newNetNS() (*brokerctl.NetNS, error) {
	var lastErr error
	for i := 0; i < 10; i++ {
		index := (os.Getpid() + i*17) % 200
		ns, err := brokerctl.NewNetNS(fmt.Sprintf("mttr-%d-%d", os.Getpid(), index), index)
		if err == nil {
			return ns, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

// logWriter sends an external command's output to the log.
type logWriter struct{ log *slog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.log.Info(strings.TrimSpace(string(p)))
	return len(p), nil
}
