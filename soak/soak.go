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
	"slices"
	"strings"
	"time"

	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/firmware/control"
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

// An entry must apply at its minute. The agent's timer fires on a clock
// running thousands of times faster than real time, so how late it may
// be is bounded in both times: 10 simulated minutes, or what 500 ms of
// real time (a busy machine's scheduling hiccup) is at the soak's speed,
// whichever is longer. The soak prints the latest it saw in both.
const (
	simTolerance  = 10 * time.Minute
	realTolerance = 500 * time.Millisecond
)

func tolerance(speed float64) time.Duration {
	return max(simTolerance, time.Duration(float64(realTolerance)*speed))
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
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("the thermostats run as this program: %w", err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	realOrigin := time.Now()
	clk := sim.ScaledClockAt(o.start, realOrigin, o.speed)
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

	// The thermostats, each a process of its own.
	rng := rand.New(rand.NewPCG(1, uint64(o.devices)))
	var devs []*device
	defer func() {
		for _, d := range devs {
			d.stop()
		}
	}()
	for i := range o.devices {
		d, err := newDevice(i, dir, ca, caFile, listen, o, realOrigin, rng)
		if err != nil {
			return nil, err
		}
		if err := d.start(exe); err != nil {
			return nil, err
		}
		devs = append(devs, d)
	}
	select {
	case <-srv.Fleet().Ready():
	case <-time.After(30 * time.Second):
		return nil, fmt.Errorf("controller not ready")
	}
	for _, d := range devs {
		if _, err := d.waitReady(60 * time.Second); err != nil {
			return nil, err
		}
	}
	res := &result{days: o.days, devices: o.devices, speed: o.speed}
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.ctlHeapStart = ms.HeapAlloc
	for _, d := range devs {
		if d.memStart, err = d.ask("mem"); err != nil {
			return nil, err
		}
	}

	// Life: every simulated hour something may happen; every simulated
	// day the broker restarts, and now and then a thermostat is killed.
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
		remote := func() {
			changes := map[string]any{protocol.PropSetpoint: protocol.RoundSetpoint(17 + 5*rng.Float64())}
			if rng.IntN(3) == 0 {
				changes = map[string]any{protocol.PropPreset: []string{"home", "away", "eco", "sleep"}[rng.IntN(4)]}
			}
			sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			if got, err := srv.Fleet().Set(sctx, d.id, changes); err == nil {
				res.remoteSets++
				w := write{src: protocol.SrcController, w: got.Props[protocol.PropSetpoint].W,
					names: expandNames([]string{protocol.PropSetpoint})}
				d.mu.Lock()
				d.ctl = append(d.ctl, w)
				d.mu.Unlock()
			}
		}
		switch r := rng.IntN(20); {
		case r < 4: // a person at the wall
			d.press([]string{"up", "down", "up"}[rng.IntN(3)])
			res.presses++
		case r < 8: // a remote user
			remote()
		case r == 8: // both at once: the writes cross, a conflict the device must win
			d.press([]string{"up", "down"}[rng.IntN(2)])
			res.presses++
			remote()
		case r == 9: // a power cut or a crash of one of the killable thermostats
			if k := killable(devs); len(k) > 0 {
				down := time.Duration(rng.IntN(180)) * time.Minute
				if err := res.killAndRestart(k[rng.IntN(len(k))], clk, exe, down); err != nil {
					return nil, err
				}
			}
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
	var finals map[string]protocol.Props
	for {
		finals, res.unequal = unequal(srv, devs)
		if len(res.unequal) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond) // polling both views: no event to wait on
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	res.ctlHeapEnd = ms.HeapAlloc
	for _, d := range devs {
		if d.memEnd, err = d.ask("mem"); err != nil {
			return nil, err
		}
	}
	res.storeKB = map[string]float64{
		"controller.db": kb(filepath.Join(dir, "controller", "controller.db")),
		"broker.db":     kb(filepath.Join(dir, "controller", "broker", "broker.db")),
		"state.json":    kb(filepath.Join(dir, "d00", "state", "state.json")),
	}
	cfg := control.DefaultConfig()
	for _, d := range devs {
		d.mu.Lock()
		res.checkSchedule(d, o.start.Add(2*time.Hour), end.Add(-2*time.Hour))
		res.checkRelays(d, cfg)
		res.checkWrites(d, finals[d.id])
		res.memory(d)
		d.mu.Unlock()
	}
	return res, nil
}

func killable(devs []*device) []*device {
	var out []*device
	for _, d := range devs {
		if d.killable {
			out = append(out, d)
		}
	}
	return out
}

// killAndRestart kills d's process with SIGKILL and starts a new one on
// the same state, as systemd's Restart=always does after a crash.
func (r *result) killAndRestart(d *device, clk hal.Clock, exe string, down time.Duration) error {
	from := clk.Now()
	d.kill()
	r.kills++
	// The board stays off for a while (a power cut): entries due
	// meanwhile are caught up at start. Simulated time passes on its own.
	time.Sleep(time.Duration(float64(down) / r.speed))
	if err := d.start(exe); err != nil {
		return err
	}
	at, err := d.waitReady(60 * time.Second)
	if err != nil {
		return err
	}
	d.mu.Lock()
	d.downs = append(d.downs, window{from, at})
	d.mu.Unlock()
	return nil
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

func newDevice(i int, dir string, ca *provisioning.CA, caFile, listen string, o options, realOrigin time.Time, rng *rand.Rand) (*device, error) {
	id := fmt.Sprintf("d%02d", i)
	ddir := filepath.Join(dir, id)
	if err := os.MkdirAll(ddir, 0o700); err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.IssueClient(id, nil)
	if err != nil {
		return nil, err
	}
	if err := provisioning.WriteCertKey(filepath.Join(ddir, "device.crt"), filepath.Join(ddir, "device.key"), certPEM, keyPEM); err != nil {
		return nil, err
	}
	loc, err := time.LoadLocation(zones[i%len(zones)])
	if err != nil {
		return nil, err
	}
	sch := weekProgram(loc.String(), rng)
	return &device{
		id: id, loc: loc, sched: sch, applied: map[string]time.Time{},
		// One in four is killed now and then; the others run the whole
		// soak in one process, so their memory at the end is comparable
		// with their memory at the start.
		killable: i%4 == 3,
		spec: childSpec{ID: id, Dir: ddir, CAFile: caFile, Broker: "mqtts://localhost:" + portOf(listen),
			Origin: o.start, RealOrigin: realOrigin, Speed: o.speed, Schedule: sch},
	}, nil
}

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

// unequal compares the controller's and every thermostat's properties,
// and returns the thermostats' (the final values of the write checks).
func unequal(srv *server.Server, devs []*device) (map[string]protocol.Props, []string) {
	finals := map[string]protocol.Props{}
	var out []string
	for _, d := range devs {
		c, ok := srv.Fleet().Device(d.id)
		if !ok {
			out = append(out, d.id+": unknown to the controller")
			continue
		}
		snap, err := d.ask("snap")
		if err != nil {
			out = append(out, err.Error())
			continue
		}
		finals[d.id] = snap.Props
		cj, _ := json.Marshal(c.Props)
		dj, _ := json.Marshal(snap.Props)
		if string(cj) != string(dj) {
			out = append(out, fmt.Sprintf("%s: controller %s, device %s", d.id, cj, dj))
		}
	}
	return finals, out
}

// result is what the soak found.
type result struct {
	days, devices                        int
	speed, realSeconds                   float64
	presses, remoteSets, restarts, kills int

	entries, late, missed, caughtUp int
	superseded                      int           // due while the board was off, and followed by another entry before it started
	latest                          time.Duration // the latest an entry applied (simulated time)
	lateSamples                     []string
	relayViolations                 []string
	unequal                         []string

	deviceWrites, ctlWrites, conflicts, lost int
	lostSamples                              []string

	ctlHeapStart, ctlHeapEnd uint64
	thHeapStart, thHeapEnd   uint64 // the largest of the thermostats never killed
	thRSSStart, thRSSEnd     uint64
	storeKB                  map[string]float64
}

// Bounds of the memory checks: what the controller's heap and a
// thermostat's may grow by over the whole soak. Both are flat in practice
// (see README); the bounds leave room for the runtime's own variation.
const (
	ctlGrowthBound = 64 << 20
	thGrowthBound  = 16 << 20
)

// checkSchedule: every entry between from and to applied within
// tolerance of its time, or, when it fell while the thermostat was down
// (killed), within tolerance of its return.
func (r *result) checkSchedule(d *device, from, to time.Time) {
	for now := from; ; {
		o, ok := schedule.Next(d.sched, d.loc, now)
		if !ok || o.Time.After(to) {
			return
		}
		now = o.Time
		r.entries++
		due, superseded := o.Time, false
		for _, w := range d.downs {
			if !o.Time.Before(w.from) && !o.Time.After(w.to) {
				// Due while the board was off: at start the entry in
				// force then applies, so an entry followed by another
				// before the start never does, by the contract.
				n, ok := schedule.Next(d.sched, d.loc, o.Time)
				superseded = ok && !n.Time.After(w.to)
				due = w.to
			}
		}
		at, ok := d.applied[o.String()]
		if superseded {
			r.superseded++
			continue
		}
		if due != o.Time {
			r.caughtUp++
		}
		if ok && at.Sub(due) > r.latest {
			r.latest = at.Sub(due)
		}
		switch {
		case !ok:
			r.missed++
			if len(r.lateSamples) < 5 {
				r.lateSamples = append(r.lateSamples, fmt.Sprintf("%s %s: never applied", d.id, o))
			}
		case at.Sub(due) > tolerance(r.speed) || o.Time.Sub(at) > time.Minute:
			r.late++
			if len(r.lateSamples) < 5 {
				r.lateSamples = append(r.lateSamples, fmt.Sprintf("%s %s: applied at %s", d.id, o, at.In(d.loc).Format(time.DateTime)))
			}
		}
	}
}

// checkRelays: every on period at least MinOn (unless it was cut by the
// end or a kill), every off period between two on periods of one process
// at least MinOff, and no on period longer than MaxRun plus one loop
// interval. A kill ends the process's periods: its relay is the board's
// business until the new process drives it (on a real board the service
// manager restarts the thermostat, which starts from its safe state).
func (r *result) checkRelays(d *device, cfg control.Config) {
	ch := d.changes
	var onSince, offSince time.Time
	for i, c := range ch {
		if c.at.IsZero() { // a new process
			onSince, offSince = time.Time{}, time.Time{}
			continue
		}
		last := i == len(ch)-1 || ch[i+1].at.IsZero()
		if c.o.Heat && onSince.IsZero() {
			if !offSince.IsZero() && c.at.Sub(offSince) < cfg.Heat.MinOff-time.Second {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat off only %v before %s", d.id, c.at.Sub(offSince), c.at.UTC().Format(time.DateTime)))
			}
			onSince, offSince = c.at, time.Time{}
		}
		if !c.o.Heat && !onSince.IsZero() {
			on := c.at.Sub(onSince)
			if on < cfg.Heat.MinOn-time.Second && !last {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat on only %v at %s", d.id, on, onSince.UTC().Format(time.DateTime)))
			}
			if cfg.Heat.MaxRun > 0 && on > cfg.Heat.MaxRun+cfg.Interval+time.Second {
				r.relayViolations = append(r.relayViolations, fmt.Sprintf("%s: heat ran %v from %s", d.id, on, onSince.UTC().Format(time.DateTime)))
			}
			onSince, offSince = time.Time{}, c.at
		}
	}
}

// checkWrites: no write lost, and every conflict won by the device. With
// final the properties both sides ended with, for each property:
//   - every write of the device has a stamp at or below the final stamp:
//     it stands, or a write made after it (that had seen it) replaced it;
//   - every controller write does too, or is concurrent with a device
//     write that does: a conflict, which the device won;
//   - anything else is a lost write (or a conflict the device lost).
func (r *result) checkWrites(d *device, final protocol.Props) {
	lost := func(w write, name string, f protocol.Clock) {
		r.lost++
		if len(r.lostSamples) < 5 {
			r.lostSamples = append(r.lostSamples, fmt.Sprintf("%s: %s write %v of %s, final stamp %v", d.id, w.src, w.w, name, f))
		}
	}
	r.deviceWrites += len(d.writes)
	r.ctlWrites += len(d.ctl)
	pairs := map[[2]protocol.Clock]bool{} // conflicts, counted once for all the properties of the two writes
	defer func() { r.conflicts += len(pairs) }()
	for _, name := range []string{protocol.PropSetpoint, protocol.PropPreset, protocol.PropMode} {
		f := final[name].W
		var devW []protocol.Clock
		for _, w := range d.writes {
			if !slices.Contains(w.names, name) {
				continue
			}
			devW = append(devW, w.w)
			if !w.w.LessEq(f) {
				lost(w, name, f)
			}
		}
		for _, w := range d.ctl {
			if !slices.Contains(w.names, name) {
				continue
			}
			won := false
			for _, dw := range devW {
				if w.w.Compare(dw) == protocol.Concurrent {
					pairs[[2]protocol.Clock{w.w, dw}] = true
					won = won || dw.LessEq(f)
				}
			}
			if !w.w.LessEq(f) && !won {
				lost(w, name, f)
			}
		}
	}
}

// memory records the thermostats' memory: the largest of those that ran
// the whole soak in one process.
func (r *result) memory(d *device) {
	if d.kills > 0 {
		return
	}
	r.thHeapStart, r.thHeapEnd = max(r.thHeapStart, d.memStart.Heap), max(r.thHeapEnd, d.memEnd.Heap)
	r.thRSSStart, r.thRSSEnd = max(r.thRSSStart, d.memStart.RSS), max(r.thRSSEnd, d.memEnd.RSS)
}

func grew(from, to uint64) int64 { return int64(to) - int64(from) }

func (r *result) ok() bool {
	return r.missed == 0 && r.late == 0 && len(r.relayViolations) == 0 && len(r.unequal) == 0 && r.lost == 0 &&
		grew(r.ctlHeapStart, r.ctlHeapEnd) < ctlGrowthBound && grew(r.thHeapStart, r.thHeapEnd) < thGrowthBound
}

func (r *result) print(w io.Writer) {
	fmt.Fprintf(w, "%d simulated days, %d thermostats (each a process), %.0fx real time (%.0f s real)\n", r.days, r.devices, r.speed, r.realSeconds)
	fmt.Fprintf(w, "life: %d button presses, %d remote writes, %d broker restarts, %d thermostats killed (kill -9) and restarted\n",
		r.presses, r.remoteSets, r.restarts, r.kills)
	fmt.Fprintf(w, "schedule entries: %d due, %d missed, %d late; %d caught up at the start after a kill, %d passed over (another entry came due before the start)\n",
		r.entries, r.missed, r.late, r.caughtUp, r.superseded)
	fmt.Fprintf(w, "  the latest applied %v after its time (%v real; tolerance %v)\n",
		r.latest.Round(time.Second), time.Duration(float64(r.latest)/r.speed).Round(time.Millisecond), tolerance(r.speed))
	for _, s := range r.lateSamples {
		fmt.Fprintf(w, "  %s\n", s)
	}
	fmt.Fprintf(w, "writes: %d by the devices, %d by the controller, %d lost; %d conflicts, all won by the device: %v\n",
		r.deviceWrites, r.ctlWrites, r.lost, r.conflicts, r.lost == 0)
	for _, s := range r.lostSamples {
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
	fmt.Fprintf(w, "controller heap: %.1f MB at start, %.1f MB at end (bound: +%d MB)\n", mb(r.ctlHeapStart), mb(r.ctlHeapEnd), ctlGrowthBound>>20)
	fmt.Fprintf(w, "thermostat heap (largest, never killed): %.1f MB at start, %.1f MB at end (bound: +%d MB); RSS %.1f MB, %.1f MB\n",
		mb(r.thHeapStart), mb(r.thHeapEnd), thGrowthBound>>20, mb(r.thRSSStart), mb(r.thRSSEnd))
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
