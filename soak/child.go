package main

// A thermostat of the soak runs in a process of its own (this program
// started again with SOAK_CHILD set), so the soak can kill -9 it as a power
// cut or a crash would, and measure its memory apart from the
// controller's. It runs the real firmware (runner: agent, control loop,
// transport) on a simulated board whose clock is shared with the soak
// through ScaledClockAt, reports on stdout, one JSON record a line, what
// the checks need (relay changes, schedule entries applied, the stamps of
// its own writes), and takes commands on stdin (press a button, snapshot,
// memory). Stdin closing stops it cleanly.

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/runner"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/protocol"
)

// childEnv names the environment variable that holds a childSpec.
const childEnv = "SOAK_CHILD"

// childSpec is what a thermostat process is started with.
type childSpec struct {
	ID         string            `json:"id"`
	Dir        string            `json:"dir"`
	CAFile     string            `json:"ca"`
	Broker     string            `json:"broker"`
	Origin     time.Time         `json:"origin"`
	RealOrigin time.Time         `json:"real_origin"`
	Speed      float64           `json:"speed"`
	Schedule   protocol.Schedule `json:"schedule"`
}

// record is one line a thermostat process reports.
type record struct {
	K      string         `json:"k"` // ready, out, entry, write, snap, mem, error
	At     time.Time      `json:"at,omitzero"`
	Heat   bool           `json:"heat,omitempty"`
	Cool   bool           `json:"cool,omitempty"`
	Entry  string         `json:"entry,omitempty"`
	Src    string         `json:"src,omitempty"`
	Names  []string       `json:"names,omitempty"` // the properties a write wrote
	W      protocol.Clock `json:"w,omitzero"`      // its stamp
	Props  protocol.Props `json:"props,omitempty"`
	Heap   uint64         `json:"heap,omitempty"`
	RSS    uint64         `json:"rss,omitempty"`
	Detail string         `json:"detail,omitempty"`
}

// reporter writes records to stdout, one at a time.
type reporter struct {
	mu  sync.Mutex
	enc *json.Encoder
}

func (r *reporter) send(rec record) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enc.Encode(rec)
}

// childMain runs one thermostat until stdin closes or SIGTERM comes.
func childMain(specJSON string, stdin io.Reader, stdout io.Writer) error {
	var s childSpec
	if err := json.Unmarshal([]byte(specJSON), &s); err != nil {
		return fmt.Errorf("%s: %w", childEnv, err)
	}
	clk := sim.ScaledClockAt(s.Origin, s.RealOrigin, s.Speed)
	rep := &reporter{enc: json.NewEncoder(stdout)}

	cfg := config.Default()
	cfg.Broker, cfg.CA = s.Broker, s.CAFile
	cfg.Cert, cfg.Key = filepath.Join(s.Dir, "device.crt"), filepath.Join(s.Dir, "device.key")
	cfg.StateDir, cfg.HAL, cfg.ControlSocket = filepath.Join(s.Dir, "state"), config.HALSim, filepath.Join(s.Dir, "ctl.sock")
	cfg.Schedule = &s.Schedule
	sb, err := sim.New(sim.Options{Clock: clk})
	if err != nil {
		return err
	}
	board := &reportingBoard{Board: sb, clk: clk, rep: rep}
	th, err := runner.New(cfg, runner.Options{Board: board, BoardClock: clk, NoControlSocket: true,
		Logger: slog.New(&writeLog{clk: clk, rep: rep, log: slog.NewTextHandler(os.Stderr, nil)})})
	if err != nil {
		return fmt.Errorf("%s: %w", s.ID, err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- th.Run(ctx) }()

	// Ready once synced: a write before the first rejoin ends is not
	// stamped yet, and the checks need its stamp.
	go func() {
		t := time.NewTicker(5 * time.Millisecond) // the agent has no event for this
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if st := th.Agent().Snapshot(); st.Connected && !st.Rejoining {
				rep.send(record{K: "ready", At: clk.Now()})
				return
			}
		}
	}()
	go func() {
		defer cancel()
		sc := bufio.NewScanner(stdin)
		for sc.Scan() {
			switch cmd, arg, _ := strings.Cut(sc.Text(), " "); cmd {
			case "press":
				b := map[string]hal.Button{"up": hal.ButtonUp, "down": hal.ButtonDown, "mode": hal.ButtonMode}[arg]
				sb.Press(b)
			case "snap":
				rep.send(record{K: "snap", Props: th.Agent().Snapshot().Props})
			case "mem":
				runtime.GC()
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				rep.send(record{K: "mem", Heap: ms.HeapAlloc, RSS: rss()})
			}
		}
	}()
	return <-done
}

// reportingBoard is the simulated board, reporting every change of the
// outputs with the simulated time, for the relay checks.
type reportingBoard struct {
	hal.Board
	clk hal.Clock
	rep *reporter

	mu    sync.Mutex
	last  hal.Outputs
	first bool
}

func (b *reportingBoard) SetOutputs(o hal.Outputs) error {
	b.mu.Lock()
	if o != b.last || !b.first {
		b.rep.send(record{K: "out", At: b.clk.Now(), Heat: o.Heat, Cool: o.Cool})
		b.last, b.first = o, true
	}
	b.mu.Unlock()
	return b.Board.SetOutputs(o)
}

// writeLog is the thermostat's log handler: it reports the device's own
// writes with their stamps, and the schedule entries applied, and drops
// the rest. The agent logs a write's clock right after the write, in the
// same step: a write is one event (sent at once, or waiting while the
// link is down), so that clock is the write's stamp.
type writeLog struct {
	clk hal.Clock
	rep *reporter
	log slog.Handler // the thermostat's log (thermostat.log in its directory)
}

func (l *writeLog) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *writeLog) WithAttrs(as []slog.Attr) slog.Handler {
	return &writeLog{clk: l.clk, rep: l.rep, log: l.log.WithAttrs(as)}
}
func (l *writeLog) WithGroup(name string) slog.Handler {
	return &writeLog{clk: l.clk, rep: l.rep, log: l.log.WithGroup(name)}
}
func (l *writeLog) Handle(ctx context.Context, r slog.Record) error {
	r.AddAttrs(slog.Time("sim", l.clk.Now()))
	l.log.Handle(ctx, r)
	var src string
	switch r.Message {
	case "button change", "preset button":
		src = protocol.SrcButton
	case "schedule entry applied":
		src = protocol.SrcSchedule
	default:
		return nil
	}
	rec := record{K: "write", Src: src, At: l.clk.Now()}
	r.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "vc":
			rec.W, _ = a.Value.Any().(protocol.Clock)
		case "entry":
			rec.Entry = a.Value.String()
		case "preset":
			rec.Names = append(rec.Names, protocol.PropPreset)
		case "changes":
			if m, ok := a.Value.Any().(map[string]any); ok {
				for k := range m {
					rec.Names = append(rec.Names, k)
				}
			}
		}
		return true
	})
	if src == protocol.SrcSchedule {
		rec.Names = []string{protocol.PropSetpoint}
		l.rep.send(record{K: "entry", Entry: rec.Entry, At: rec.At})
	}
	rec.Names = expandNames(rec.Names)
	l.rep.send(rec)
	return nil
}

// expandNames adds what a write of these properties writes with them, by
// the contract's preset rules: a setpoint write writes preset "none", a
// preset write its setpoint, both with the same stamp.
func expandNames(names []string) []string {
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	if set[protocol.PropSetpoint] || set[protocol.PropPreset] {
		set[protocol.PropSetpoint], set[protocol.PropPreset] = true, true
	}
	out := make([]string, 0, len(set))
	for _, n := range []string{protocol.PropSetpoint, protocol.PropPreset, protocol.PropMode} {
		if set[n] {
			out = append(out, n)
		}
	}
	return out
}

// rss is the process's resident set in bytes, from /proc (0 elsewhere).
func rss() uint64 { return procRSS(os.Getpid()) }

func procRSS(pid int) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			var kb uint64
			fmt.Sscanf(strings.TrimSpace(v), "%d", &kb)
			return kb << 10
		}
	}
	return 0
}
