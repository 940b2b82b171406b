package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/firmware/runner"
	"github.com/thermofleet/thermo/firmware/schedule"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

type options struct {
	devices int
	days    int
	speed   float64
	start   time.Time
	dir     string
}

// zones the devices' week programs run in, in turn: Berlin changes its
// clocks on 29 March 2026, Sydney on 5 April, Tokyo never.
var zones = []string{"Europe/Berlin", "Australia/Sydney", "Asia/Tokyo", "America/New_York"}

// tolerance is how late (in simulated time) an entry may apply: the
// agent's timer on a clock running thousands of times faster than real
// time, on a loaded machine.
const tolerance = 10 * time.Minute

// device is one simulated thermostat under the soak.
type device struct {
	id      string
	loc     *time.Location
	sched   protocol.Schedule
	th      *runner.Thermostat
	board   *recordingBoard
	applied *appliedLog
	cancel  context.CancelFunc
	done    chan error
}

func soak(ctx context.Context, o options, stderr io.Writer) (*result, error) {
	dir := o.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "thermo-soak-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	clk := sim.ScaledClockFrom(o.start, o.speed)
	end := o.start.Add(time.Duration(o.days) * 24 * time.Hour)

	// The fleet's PKI, as `controllerlite pki` makes it.
	ca, err := provisioning.InitCA(filepath.Join(dir, "pki"), provisioning.CAOptions{Name: "soak"})
	if err != nil {
		return nil, err
	}
	srvCert, srvKey, err := ca.IssueServer([]string{"localhost", "127.0.0.1"}, nil)
	if err != nil {
		return nil, err
	}
	caFile := filepath.Join(dir, "pki", provisioning.CACertFile)
	srvCertFile, srvKeyFile := filepath.Join(dir, "server.crt"), filepath.Join(dir, "server.key")
	if err := provisioning.WriteCertKey(srvCertFile, srvKeyFile, srvCert, srvKey); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	listen := ln.Addr().String()
	ln.Close()
	scfg := server.Config{CAFile: caFile, CertFile: srvCertFile, KeyFile: srvKeyFile, DataDir: filepath.Join(dir, "controller"),
		HTTPAddr: "127.0.0.1:0", Listen: listen, Logger: quiet}
	srv, stopCtl, err := startController(ctx, scfg)
	if err != nil {
		return nil, err
	}
	defer func() { stopCtl() }()

	// The thermostats.
	rng := rand.New(rand.NewPCG(1, uint64(o.devices)))
	var devs []*device
	for i := range o.devices {
		d, err := newDevice(ctx, i, dir, ca, caFile, listen, clk, rng)
		if err != nil {
			return nil, err
		}
		defer d.stop()
		devs = append(devs, d)
	}
	select {
	case <-srv.Fleet().Ready():
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("controller not ready")
	}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	heapStart := ms.HeapAlloc

	// Life: every simulated hour something may happen; every simulated
	// day the broker restarts.
	res := &result{days: o.days, devices: o.devices, speed: o.speed}
	realStart := time.Now()
	nextDay := o.start.Add(24 * time.Hour)
	tick := time.NewTicker(time.Duration(float64(time.Hour) / o.speed))
	defer tick.Stop()
	for clk.Now().Before(end) {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-tick.C:
		}
		now := clk.Now()
		d := devs[rng.IntN(len(devs))]
		switch r := rng.IntN(10); {
		case r < 2: // a person at the wall
			b := []hal.Button{hal.ButtonUp, hal.ButtonDown, hal.ButtonUp}[rng.IntN(3)]
			d.board.sim.Press(b)
			res.presses++
		case r < 4: // a remote user
			changes := map[string]any{protocol.PropSetpoint: protocol.RoundSetpoint(17 + 5*rng.Float64())}
			if rng.IntN(3) == 0 {
				changes = map[string]any{protocol.PropPreset: []string{"home", "away", "eco", "sleep"}[rng.IntN(4)]}
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if _, err := srv.Fleet().Set(sctx, d.id, changes); err == nil {
				res.remoteSets++
			}
			cancel()
		}
		if !now.Before(nextDay) {
			nextDay = nextDay.Add(24 * time.Hour)
			stopCtl()
			if srv, stopCtl, err = startController(ctx, scfg); err != nil {
				stopCtl = func() {}
				return nil, fmt.Errorf("broker restart: %w", err)
			}
			res.restarts++
		}
	}
	res.realSeconds = time.Since(realStart).Seconds()

	// Settle: both sides agree once the last messages are through.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res.unequal = unequal(srv, devs)
		if len(res.unequal) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling the fleet's view: no event to wait on
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.heapStartMB, res.heapEndMB = mb(heapStart), mb(ms.HeapAlloc)
	res.storeKB = map[string]float64{
		"controller.db": kb(filepath.Join(dir, "controller", "controller.db")),
		"broker.db":     kb(filepath.Join(dir, "controller", "broker", "broker.db")),
		"state.json":    kb(filepath.Join(dir, "d00", "state", "state.json")),
	}
	cfg := control.DefaultConfig()
	for _, d := range devs {
		res.checkSchedule(d, o.start.Add(2*time.Hour), end.Add(-2*time.Hour))
		res.checkRelays(d, cfg)
	}
	return res, nil
}

// startController runs controllerlite serve in-process; stop ends it and
// waits.
func startController(ctx context.Context, cfg server.Config) (*server.Server, func(), error) {
	cctx, cancel := context.WithCancel(ctx)
	srv, err := server.Start(cctx, cfg)
	if err != nil {
		cancel()
		return nil, nil, err
	}
	return srv, func() { cancel(); srv.Wait() }, nil
}

func newDevice(ctx context.Context, i int, dir string, ca *provisioning.CA, caFile, listen string, clk hal.Clock, rng *rand.Rand) (*device, error) {
	id := fmt.Sprintf("d%02d", i)
	ddir := filepath.Join(dir, id)
	if err := os.MkdirAll(ddir, 0o700); err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.IssueClient(id, nil)
	if err != nil {
		return nil, err
	}
	cert, key := filepath.Join(ddir, "device.crt"), filepath.Join(ddir, "device.key")
	if err := provisioning.WriteCertKey(cert, key, certPEM, keyPEM); err != nil {
		return nil, err
	}
	loc, err := time.LoadLocation(zones[i%len(zones)])
	if err != nil {
		return nil, err
	}
	sch := weekProgram(loc.String(), rng)
	cfg := config.Default()
	cfg.Broker, cfg.CA, cfg.Cert, cfg.Key = "mqtts://localhost:"+portOf(listen), caFile, cert, key
	cfg.StateDir, cfg.HAL, cfg.ControlSocket = filepath.Join(ddir, "state"), config.HALSim, filepath.Join(ddir, "ctl.sock")
	cfg.Schedule = &sch
	sb, err := sim.New(sim.Options{Clock: clk})
	if err != nil {
		return nil, err
	}
	rb := &recordingBoard{Board: sb, sim: sb, clk: clk}
	applied := &appliedLog{clk: clk}
	th, err := runner.New(cfg, runner.Options{Board: rb, BoardClock: clk, NoControlSocket: true,
		Logger: slog.New(applied)})
	if err != nil {
		return nil, fmt.Errorf("%s: %w", id, err)
	}
	d := &device{id: id, loc: loc, sched: sch, th: th, board: rb, applied: applied, done: make(chan error, 1)}
	dctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	go func() { d.done <- th.Run(dctx) }()
	return d, nil
}

func (d *device) stop() { d.cancel(); <-d.done }

// weekProgram: four entries a weekday, two at the weekend, setpoints and
// presets mixed.
func weekProgram(tz string, rng *rand.Rand) protocol.Schedule {
	sp := func(c float64) *float64 { return &c }
	s := protocol.Schedule{Enabled: true, TZ: tz, Week: map[string][]protocol.Entry{}}
	for i, day := range protocol.Weekdays {
		if i < 5 {
			s.Week[day] = []protocol.Entry{{At: "06:30", Preset: "home"}, {At: "08:00", SetpointC: sp(17 + float64(rng.IntN(3)))},
				{At: "17:30", Preset: "comfort"}, {At: "22:30", Preset: "sleep"}}
		} else {
			s.Week[day] = []protocol.Entry{{At: "08:30", SetpointC: sp(21.5)}, {At: "23:00", Preset: "sleep"}}
		}
	}
	return s
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func mb(b uint64) float64 { return float64(b) / (1 << 20) }

func kb(path string) float64 {
	fi, err := os.Stat(path)
	if err != nil {
		return -1
	}
	return float64(fi.Size()) / 1024
}

// recordingBoard is the simulated board, recording every change of the
// outputs on the simulated clock, for the relay checks.
type recordingBoard struct {
	hal.Board
	sim *sim.Board
	clk hal.Clock

	mu      sync.Mutex
	changes []outputChange
	last    hal.Outputs
}

type outputChange struct {
	at time.Time
	o  hal.Outputs
}

func (b *recordingBoard) SetOutputs(o hal.Outputs) error {
	b.mu.Lock()
	if o != b.last || len(b.changes) == 0 {
		b.changes = append(b.changes, outputChange{b.clk.Now(), o})
		b.last = o
	}
	b.mu.Unlock()
	return b.Board.SetOutputs(o)
}

// appliedLog is a slog handler that keeps the schedule entries the agent
// applied, with the simulated time, and drops the rest of the log.
type appliedLog struct {
	clk hal.Clock

	mu      sync.Mutex
	entries map[string]time.Time // "2006-01-02 15:04 (target)" → when applied
}

func (l *appliedLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *appliedLog) WithAttrs([]slog.Attr) slog.Handler            { return l }
func (l *appliedLog) WithGroup(string) slog.Handler                 { return l }
func (l *appliedLog) Handle(_ context.Context, r slog.Record) error {
	if r.Message != "schedule entry applied" {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "entry" {
			l.mu.Lock()
			if l.entries == nil {
				l.entries = map[string]time.Time{}
			}
			if _, seen := l.entries[a.Value.String()]; !seen {
				l.entries[a.Value.String()] = l.clk.Now()
			}
			l.mu.Unlock()
		}
		return true
	})
	return nil
}

func unequal(srv *server.Server, devs []*device) []string {
	var out []string
	for _, d := range devs {
		c, ok := srv.Fleet().Device(d.id)
		if !ok {
			out = append(out, d.id+": unknown to the controller")
			continue
		}
		st := d.th.Agent().Snapshot()
		cj, _ := json.Marshal(c.Props)
		dj, _ := json.Marshal(st.Props)
		if string(cj) != string(dj) {
			out = append(out, fmt.Sprintf("%s: controller %s, device %s", d.id, cj, dj))
		}
	}
	return out
}

// result is what the soak found.
type result struct {
	days, devices                 int
	speed, realSeconds            float64
	presses, remoteSets, restarts int

	entries, late, missed int
	lateSamples           []string
	relayViolations       []string
	unequal               []string
	heapStartMB           float64
	heapEndMB             float64
	storeKB               map[string]float64
}

// checkSchedule: every entry between from and to applied within
// tolerance of its time.
func (r *result) checkSchedule(d *device, from, to time.Time) {
	d.applied.mu.Lock()
	defer d.applied.mu.Unlock()
	for now := from; ; {
		o, ok := schedule.Next(d.sched, d.loc, now)
		if !ok || o.Time.After(to) {
			return
		}
		now = o.Time
		r.entries++
		at, ok := d.applied.entries[o.String()]
		switch {
		case !ok:
			r.missed++
			if len(r.lateSamples) < 5 {
				r.lateSamples = append(r.lateSamples, fmt.Sprintf("%s %s: never applied", d.id, o))
			}
		case at.Sub(o.Time) > tolerance || o.Time.Sub(at) > time.Minute:
			r.late++
			if len(r.lateSamples) < 5 {
				r.lateSamples = append(r.lateSamples, fmt.Sprintf("%s %s: applied at %s", d.id, o, at.In(d.loc).Format(time.DateTime)))
			}
		}
	}
}

// checkRelays: every on period at least MinOn (unless it was cut by the
// end), every off period between two on periods at least MinOff, and no
// on period longer than MaxRun plus one loop interval.
func (r *result) checkRelays(d *device, cfg control.Config) {
	d.board.mu.Lock()
	defer d.board.mu.Unlock()
	ch := d.board.changes
	var onSince, offSince time.Time
	for i, c := range ch {
		if c.o.Heat && onSince.IsZero() {
			if !offSince.IsZero() && c.at.Sub(offSince) < cfg.Heat.MinOff-time.Second {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat off only %v before %s", d.id, c.at.Sub(offSince), c.at.UTC().Format(time.DateTime)))
			}
			onSince, offSince = c.at, time.Time{}
		}
		if !c.o.Heat && !onSince.IsZero() {
			on := c.at.Sub(onSince)
			if on < cfg.Heat.MinOn-time.Second && i < len(ch)-1 {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat on only %v at %s", d.id, on, onSince.UTC().Format(time.DateTime)))
			}
			if cfg.Heat.MaxRun > 0 && on > cfg.Heat.MaxRun+cfg.Interval+time.Second {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat ran %v from %s", d.id, on, onSince.UTC().Format(time.DateTime)))
			}
			onSince, offSince = time.Time{}, c.at
		}
	}
}

func (r *result) ok() bool {
	return r.missed == 0 && r.late == 0 && len(r.relayViolations) == 0 && len(r.unequal) == 0 && r.heapEndMB-r.heapStartMB < 64
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "%d simulated days, %d thermostats, %.0fx real time (%.0f s real)\n", r.days, r.devices, r.speed, r.realSeconds)
	fmt.Fprintf(w, "life: %d button presses, %d remote writes, %d broker restarts\n", r.presses, r.remoteSets, r.restarts)
	fmt.Fprintf(w, "schedule entries: %d due, %d missed, %d late (tolerance %v)\n", r.entries, r.missed, r.late, tolerance)
	for _, s := range r.lateSamples {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "both sides equal: %v\n", len(r.unequal) == 0)
	for _, s := range r.unequal {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "relay rules (min on/off, max run): %d violations\n", len(r.relayViolations))
	for _, s := range r.relayViolations[:min(5, len(r.relayViolations))] {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "heap: %.1f MB at start, %.1f MB at end (bound: +64 MB)\n", r.heapStartMB, r.heapEndMB)
	var stores []string
	for _, k := range []string{"controller.db", "broker.db", "state.json"} {
		stores = append(stores, fmt.Sprintf("%s %.0f KB", k, r.storeKB[k]))
	}
	fmt.Fprintf(w, "stores at end: %s\n", strings.Join(stores, ", "))
	if r.ok() {
		fmt.Fprintln(w, "PASS")
	} else {
		fmt.Fprintln(w, "FAIL")
	}
}
