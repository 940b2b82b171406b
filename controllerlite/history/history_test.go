package history

import (
	"context"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// clock is the injected clock: tests move it instead of waiting.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Set(t time.Time) { c.mu.Lock(); c.t = t; c.mu.Unlock() }

var quietLog = slog.New(slog.DiscardHandler)

var base = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

// logs keeps log lines so a test can check what was logged.
type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) Enabled(context.Context, slog.Level) bool { return true }
func (l *logs) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	l.mu.Lock()
	l.lines = append(l.lines, b.String())
	l.mu.Unlock()
	return nil
}
func (l *logs) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logs) WithGroup(string) slog.Handler      { return l }

// all is every line logged so far, for a failure's message.
func (l *logs) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.lines...)
}

func (l *logs) has(s string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, x := range l.lines {
		if strings.Contains(x, s) {
			return true
		}
	}
	return false
}

// in is a telemetry message received at base+at; NaN temp or sp: absent.
type in struct {
	at         time.Duration
	temp, sp   float64
	heat, cool bool
	action     string
}

var nan = math.NaN()

func (s in) record(h *History, id string, t0 time.Time) {
	tm := protocol.Telemetry{V: 1, TS: t0.Add(s.at), Heat: s.heat, Cool: s.cool, Action: s.action, SensorOK: true}
	if !math.IsNaN(s.temp) {
		v := s.temp
		tm.TempC = &v
	}
	props := protocol.Props{protocol.PropMode: {Val: protocol.ModeHeat}}
	if !math.IsNaN(s.sp) {
		props[protocol.PropSetpoint] = protocol.Prop{Val: s.sp}
	}
	h.Telemetry(id, t0.Add(s.at), tm, props)
}

func recordAll(t testing.TB, h *History, id string, t0 time.Time, ins []in) {
	t.Helper()
	for _, s := range ins {
		s.record(h, id, t0)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
}

// out is an expected point at base+t; tn 0: no temperature, spn 0: no
// setpoint.
type out struct {
	t              time.Duration
	n, tn          int
	min, mean, max float64
	spn            int
	sp, spMean     float64
	heat, cool     float64
}

func (o out) String() string {
	return fmt.Sprintf("{t=%v n=%d tn=%d %.2f/%.2f/%.2f spn=%d sp=%.2f/%.2f heat=%.2f cool=%.2f}",
		o.t, o.n, o.tn, o.min, o.mean, o.max, o.spn, o.sp, o.spMean, o.heat, o.cool)
}

func outOf(p Point, t0 time.Time) out {
	return out{t: p.T.Sub(t0), n: p.Samples, tn: p.TempN, min: p.TempMin, mean: p.TempMean, max: p.TempMax,
		spn: p.SetpointN, sp: p.Setpoint, spMean: p.SetpointMean, heat: p.HeatingS, cool: p.CoolingS}
}

// near compares points; tol allows the rounding of compaction (whole
// seconds, hundredths of a degree).
func near(a, b out, tol float64) bool {
	f := func(x, y, tol float64) bool { return math.Abs(x-y) <= tol }
	return a.t == b.t && a.n == b.n && a.tn == b.tn && a.spn == b.spn &&
		f(a.min, b.min, 1e-9) && f(a.max, b.max, 1e-9) && f(a.mean, b.mean, tol/100+1e-9) &&
		f(a.sp, b.sp, 1e-9) && f(a.spMean, b.spMean, tol/100+1e-9) &&
		f(a.heat, b.heat, tol) && f(a.cool, b.cool, tol)
}

func points(t testing.TB, h *History, id string, from, to time.Time, step time.Duration) []out {
	t.Helper()
	res, err := h.Query(id, from, to, step)
	if err != nil {
		t.Fatal(err)
	}
	var got []out
	for _, p := range res.Points {
		got = append(got, outOf(p, from))
	}
	return got
}

func samePoints(t *testing.T, what string, got, want []out, tol float64) {
	t.Helper()
	ok := len(got) == len(want)
	for i := 0; ok && i < len(got); i++ {
		ok = near(got[i], want[i], tol)
	}
	if !ok {
		t.Errorf("%s:\n got %v\nwant %v", what, got, want)
	}
}

var aggCases = []struct {
	name string
	ins  []in
	now  time.Duration // clock at query time, after base
	step time.Duration
	want []out
}{
	{"mean min max", []in{{0, 19.8, 20, false, false, ""}, {20 * time.Second, 20.1, 20, false, false, ""}, {40 * time.Second, 20.4, 20, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 3, tn: 3, min: 19.8, mean: 20.1, max: 20.4, spn: 3, sp: 20, spMean: 20}}},
	{"missing temperature", []in{{0, 20, nan, false, false, ""}, {20 * time.Second, nan, nan, false, false, ""}, {40 * time.Second, 21, nan, false, false, ""}, {90 * time.Second, nan, nan, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 3, tn: 2, min: 20, mean: 20.5, max: 21}, {t: time.Minute, n: 1}}},
	{"heating across a bucket edge", []in{{30 * time.Second, 20, 21, true, false, ""}, {90 * time.Second, 20.5, 21, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20, spn: 1, sp: 21, spMean: 21, heat: 30},
			{t: time.Minute, n: 1, tn: 1, min: 20.5, mean: 20.5, max: 20.5, spn: 1, sp: 21, spMean: 21, heat: 30}}},
	{"heating over a whole bucket without samples", []in{{50 * time.Second, 20, nan, true, false, ""}, {130 * time.Second, 20, nan, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20, heat: 10}, {t: time.Minute, heat: 60},
			{t: 2 * time.Minute, n: 1, tn: 1, min: 20, mean: 20, max: 20, heat: 10}}},
	{"a gap is capped at MaxGap", []in{{0, 20, nan, true, false, ""}, {20 * time.Minute, 19, nan, false, false, ""}},
		time.Hour, 5 * time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20, heat: 300}, {t: 20 * time.Minute, n: 1, tn: 1, min: 19, mean: 19, max: 19}}},
	{"the last sample holds until now", []in{{0, 20, nan, true, false, ""}},
		2 * time.Minute, 5 * time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20, heat: 120}}},
	{"action heating, cooling output", []in{{0, 20, nan, false, false, protocol.ActionHeating}, {60 * time.Second, 20, nan, false, true, ""}, {100 * time.Second, 20, nan, false, false, protocol.ActionIdle}},
		time.Hour, 5 * time.Minute,
		[]out{{t: 0, n: 3, tn: 3, min: 20, mean: 20, max: 20, heat: 60, cool: 40}}},
	{"setpoint: the last, and the mean", []in{{0, nan, 20, false, false, ""}, {10 * time.Second, nan, 21, false, false, ""}, {20 * time.Second, nan, nan, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 3, spn: 2, sp: 21, spMean: 20.5}}},
	{"two samples in one millisecond", []in{{0, 20, nan, false, false, ""}, {0, 21, nan, true, false, ""}},
		2 * time.Minute, time.Minute,
		[]out{{t: 0, n: 2, tn: 2, min: 20, mean: 20.5, max: 21, heat: 60}, {t: time.Minute, heat: 60}}},
	{"buckets without data are left out", []in{{0, 20, nan, false, false, ""}, {10 * time.Minute, 22, nan, false, false, ""}},
		time.Hour, time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20}, {t: 10 * time.Minute, n: 1, tn: 1, min: 22, mean: 22, max: 22}}},
	{"15-minute step", []in{{14 * time.Minute, 20, 20, true, false, ""}, {16 * time.Minute, 21, 21, false, false, ""}, {31 * time.Minute, 22, 21, false, true, ""}},
		time.Hour, 15 * time.Minute,
		[]out{{t: 0, n: 1, tn: 1, min: 20, mean: 20, max: 20, spn: 1, sp: 20, spMean: 20, heat: 60},
			{t: 15 * time.Minute, n: 1, tn: 1, min: 21, mean: 21, max: 21, spn: 1, sp: 21, spMean: 21, heat: 60},
			{t: 30 * time.Minute, n: 1, tn: 1, min: 22, mean: 22, max: 22, spn: 1, sp: 21, spMean: 21, cool: 300}}},
}

// testAggregation: raw samples answered at a step of a minute and more.
func testAggregation(t *testing.T, k *kit) {
	for _, tc := range aggCases {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{t: base.Add(tc.now)}
			h := k.open(t, k.place(t), clk, Options{})
			recordAll(t, h, "d1", base, tc.ins)
			samePoints(t, "points", points(t, h, "d1", base, base.Add(time.Hour), tc.step), tc.want, 0.005)
		})
	}
}

// testCompactionMatchesRaw: after compaction, 15-minute buckets answer
// as the raw samples did, but for the rounding to whole seconds and
// hundredths; raw samples are gone but for one whose outputs hold past
// the cut.
func testCompactionMatchesRaw(t *testing.T, k *kit) {
	for _, tc := range aggCases {
		t.Run(tc.name, func(t *testing.T) {
			clk := &clock{t: base}
			h := k.open(t, k.place(t), clk, Options{})
			recordAll(t, h, "d1", base, tc.ins)
			clk.Set(base.Add(50 * time.Hour))
			for _, step := range []time.Duration{15 * time.Minute, time.Hour} {
				before := points(t, h, "d1", base, base.Add(2*time.Hour), step)
				if len(before) == 0 {
					t.Fatal("no points before compaction")
				}
				if err := h.Compact(); err != nil {
					t.Fatal(err)
				}
				raw, buckets := k.count(t, h, "d1")
				if raw != 0 || buckets == 0 {
					t.Fatalf("after compaction: %d raw samples, %d buckets", raw, buckets)
				}
				samePoints(t, fmt.Sprintf("step %v", step), points(t, h, "d1", base, base.Add(2*time.Hour), step), before, 0.5)
			}
		})
	}
}

// series is days of 30 s telemetry from t0, with the outputs switching on
// and off at random (seeded) and devices going silent now and then.
func series(t0 time.Time, days int, seed uint64) []in {
	r := rand.New(rand.NewPCG(seed, 1))
	var ins []in
	heat := false
	for at := time.Duration(0); at < time.Duration(days)*24*time.Hour; at += 30 * time.Second {
		if r.IntN(2000) == 0 { // silent for up to 2 hours
			at += time.Duration(r.IntN(7200)) * time.Second
		}
		if r.IntN(20) == 0 {
			heat = !heat
		}
		temp := 20 + 2*math.Sin(float64(at)/float64(6*time.Hour)) + float64(r.IntN(100))/100
		if r.IntN(50) == 0 {
			temp = nan
		}
		sp := 20.5
		if (at/time.Hour)%24 < 7 {
			sp = 17
		}
		ins = append(ins, in{at: at + time.Duration(r.IntN(1000))*time.Millisecond, temp: temp, sp: sp, heat: heat})
	}
	return ins
}

// testIncrementalCompaction: compacting every 15 minutes while samples
// arrive (the carry across each cut) answers as one history never
// compacted.
func testIncrementalCompaction(t *testing.T, k *kit) {
	ins := series(base, 4, 7)
	clkA, clkB := &clock{t: base}, &clock{t: base}
	a := k.open(t, k.place(t), clkA, Options{})
	b := k.open(t, k.place(t), clkB, Options{})
	i := 0
	for now := base; now.Before(base.Add(4 * 24 * time.Hour)); now = now.Add(15 * time.Minute) {
		for ; i < len(ins) && base.Add(ins[i].at).Before(now); i++ {
			ins[i].record(a, "d1", base)
			ins[i].record(b, "d1", base)
		}
		clkA.Set(now)
		if err := a.Flush(); err != nil {
			t.Fatal(err)
		}
		if err := a.Compact(); err != nil {
			t.Fatal(err)
		}
	}
	for ; i < len(ins); i++ {
		ins[i].record(a, "d1", base)
		ins[i].record(b, "d1", base)
	}
	end := base.Add(6 * 24 * time.Hour)
	clkA.Set(end)
	clkB.Set(end)
	for _, h := range []*History{a, b} {
		if err := h.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if raw, buckets := k.count(t, a, "d1"); raw > 48*120+2 || buckets < 2*24*3 { // 48 h raw; 2 days of buckets but for the silences
		t.Fatalf("compacted: %d raw samples, %d buckets", raw, buckets)
	}
	if raw, buckets := k.count(t, b, "d1"); raw != len(ins) || buckets != 0 {
		t.Fatalf("never compacted: %d raw samples of %d, %d buckets", raw, len(ins), buckets)
	}
	for _, step := range []time.Duration{15 * time.Minute, 6 * time.Hour, 24 * time.Hour} {
		want := points(t, b, "d1", base, base.Add(4*24*time.Hour), step)
		got := points(t, a, "d1", base, base.Add(4*24*time.Hour), step)
		var heat float64
		for _, p := range want {
			heat += p.heat
		}
		if heat == 0 {
			t.Fatal("the series never heats")
		}
		// Every 15-minute bucket rounds its seconds: at most half a
		// second each.
		samePoints(t, fmt.Sprintf("step %v", step), got, want, 0.5*float64(step/(15*time.Minute)))
	}
}

// testRetention: buckets older than 400 days are deleted, and a device
// with nothing left goes.
func testRetention(t *testing.T, k *kit) {
	clk := &clock{t: base}
	h := k.open(t, k.place(t), clk, Options{})
	recordAll(t, h, "old", base, []in{{0, 20, 20, true, false, ""}, {time.Minute, 20, 20, false, false, ""}})
	recordAll(t, h, "d1", base, []in{{0, 20, 20, true, false, ""}, {24 * time.Hour, 21, 20, false, false, ""}})
	clk.Set(base.Add(3*24*time.Hour + 15*time.Minute))
	if err := h.Compact(); err != nil {
		t.Fatal(err)
	}
	if _, buckets := k.count(t, h, "d1"); buckets != 2 {
		t.Fatalf("%d buckets, want 2", buckets)
	}
	clk.Set(base.Add(Retention + 12*time.Hour))
	if err := h.Compact(); err != nil {
		t.Fatal(err)
	}
	if raw, buckets := k.count(t, h, "d1"); raw != 0 || buckets != 1 {
		t.Fatalf("d1 after 400 days: %d raw, %d buckets; want the second day's bucket only", raw, buckets)
	}
	got := points(t, h, "d1", base, base.Add(Retention), 24*time.Hour)
	samePoints(t, "d1", got, []out{{t: 24 * time.Hour, n: 1, tn: 1, min: 21, mean: 21, max: 21, spn: 1, sp: 20, spMean: 20}}, 0)
	if k.has(t, h, "old") {
		t.Error("a device with nothing left is still there")
	}
}

// testRestart: what was recorded, flushed at Close or compacted, is there
// after a reopen; samples told after Close are ignored.
func testRestart(t *testing.T, k *kit) {
	dir := k.place(t)
	clk := &clock{t: base.Add(time.Hour)}
	h := k.open(t, dir, clk, Options{})
	ins := []in{{0, 20, 20, true, false, ""}, {time.Minute, 21, 20, false, false, ""}}
	for _, s := range ins { // no Flush: Close writes them
		s.record(h, "d1", base)
	}
	if err := h.Close(); err != nil {
		t.Fatal(err)
	}
	in{2 * time.Minute, 30, 20, false, false, ""}.record(h, "d1", base)
	want := []out{{t: 0, n: 2, tn: 2, min: 20, mean: 20.5, max: 21, spn: 2, sp: 20, spMean: 20, heat: 60}}

	h = k.open(t, dir, clk, Options{})
	samePoints(t, "after restart", points(t, h, "d1", base, base.Add(time.Hour), time.Hour), want, 0)
	clk.Set(base.Add(50 * time.Hour))
	if err := h.Compact(); err != nil {
		t.Fatal(err)
	}
	h.Close()
	h = k.open(t, dir, clk, Options{})
	samePoints(t, "compacted, after restart", points(t, h, "d1", base, base.Add(time.Hour), time.Hour), want, 0)
}

// testDelete: Delete removes a device's stored and waiting samples, and
// no other's.
func testDelete(t *testing.T, k *kit) {
	clk := &clock{t: base.Add(time.Hour)}
	h := k.open(t, k.place(t), clk, Options{})
	recordAll(t, h, "d1", base, []in{{0, 20, 20, false, false, ""}})
	recordAll(t, h, "d2", base, []in{{0, 20, 20, false, false, ""}})
	in{time.Minute, 21, 20, false, false, ""}.record(h, "d1", base) // waiting
	if err := h.Delete("d1"); err != nil {
		t.Fatal(err)
	}
	if err := h.Delete("nobody"); err != nil {
		t.Fatalf("delete of an unknown id: %v", err)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := points(t, h, "d1", base, base.Add(time.Hour), time.Minute); len(got) != 0 {
		t.Fatalf("d1 after Delete: %v", got)
	}
	if got := points(t, h, "d2", base, base.Add(time.Hour), time.Minute); len(got) != 1 {
		t.Fatalf("d2 after deleting d1: %v", got)
	}
}

// TestBufferFull: while the writer does not keep up, Telemetry drops
// samples beyond the buffer, counts them, and the writer logs the count;
// nothing blocks.
func TestBufferFull(t *testing.T) {
	clk := &clock{t: base.Add(time.Hour)}
	l := &logs{}
	h := open(t, t.TempDir(), clk, Options{Buffer: 4, Logger: slog.New(l), FlushEvery: time.Hour})
	h.writeMu.Lock() // the disk is stuck: no flush can start
	for i := range 10 {
		in{time.Duration(i) * time.Second, 20, 20, false, false, ""}.record(h, "d1", base)
	}
	st := h.Stats()
	h.writeMu.Unlock()
	if st.Pending != 4 || st.Dropped != 6 {
		t.Fatalf("stats %+v, want 4 pending and 6 dropped", st)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	if !l.has("history: samples dropped") || !l.has("dropped=6") {
		t.Fatalf("no warning logged: %v", l.all())
	}
	if got := points(t, h, "d1", base, base.Add(time.Hour), time.Hour); len(got) != 1 || got[0].n != 4 {
		t.Fatalf("points %v, want the 4 buffered samples", got)
	}
	if st := h.Stats(); st.Written != 4 || st.Pending != 0 {
		t.Fatalf("stats after flush %+v", st)
	}

	// A write that fails (the disk full, here the file gone) loses its
	// batch, counted and logged; the buffer does not keep it.
	h.be.close()
	for i := range 3 {
		in{time.Minute + time.Duration(i)*time.Second, 20, 20, false, false, ""}.record(h, "d1", base)
	}
	if err := h.Flush(); err == nil {
		t.Fatal("a flush to a closed database succeeded")
	}
	if st := h.Stats(); st.Dropped != 9 || st.Pending != 0 || st.Written != 4 {
		t.Fatalf("stats after a failed write %+v, want 9 dropped and none pending", st)
	}
	// The background writer may take part of the batch first (its failure
	// is counted the same): the stats above hold the total, the log says
	// why.
	if !l.has("history: write failed: samples lost") || !l.has("database not open") {
		t.Fatalf("the failed write not logged: %v", l.all())
	}
}

// TestQueryRules: the defaults and the refusals.
func TestQueryRules(t *testing.T) {
	now := base.Add(100 * 24 * time.Hour)
	day := 24 * time.Hour
	tests := []struct {
		name     string
		from, to time.Time
		step     time.Duration
		wantFrom time.Time
		wantTo   time.Time
		wantStep time.Duration
		err      string
	}{
		{"defaults: the last 24 h in 5 minutes", time.Time{}, time.Time{}, 0, now.Add(-day), now, 5 * time.Minute, ""},
		{"2 hours: 1 minute", now.Add(-2 * time.Hour), time.Time{}, 0, now.Add(-2 * time.Hour), now, time.Minute, ""},
		{"47 hours: 15 minutes", now.Add(-47 * time.Hour), now, 0, now.Add(-47 * time.Hour), now, 15 * time.Minute, ""},
		{"from older than 48 h: at least 15 minutes", now.Add(-49 * time.Hour), now.Add(-47 * time.Hour), 0, now.Add(-49 * time.Hour), now.Add(-47 * time.Hour), 15 * time.Minute, ""},
		{"7 days: 1 hour", now.Add(-7 * day), now, 0, now.Add(-7 * day), now, time.Hour, ""},
		{"30 days: 6 hours", now.Add(-30 * day), now, 0, now.Add(-30 * day), now, 6 * time.Hour, ""},
		{"400 days: 1 day", now.Add(-400 * day), now, 0, now.Add(-400 * day), now, day, ""},
		{"from rounded down to the step", now.Add(-time.Hour + 7*time.Minute), now, 15 * time.Minute, now.Add(-time.Hour), now, 15 * time.Minute, ""},
		{"to defaults to now", now.Add(-time.Hour), time.Time{}, time.Minute, now.Add(-time.Hour), now, time.Minute, ""},
		{"from after to", now, now.Add(-time.Hour), 0, time.Time{}, time.Time{}, 0, "is not before to"},
		{"from equals to", now, now, 0, time.Time{}, time.Time{}, 0, "is not before to"},
		{"step under a minute", now.Add(-time.Hour), now, 30 * time.Second, time.Time{}, time.Time{}, 0, "step 30s is under 1m0s"},
		{"step not whole seconds", now.Add(-time.Hour), now, 90500 * time.Millisecond, time.Time{}, time.Time{}, 0, "not whole seconds"},
		{"fine step into compacted data", now.Add(-3 * day), now, 5 * time.Minute, time.Time{}, time.Time{}, 0, "must be a multiple of 15m0s"},
		{"too many points", now.Add(-90 * day), now, 15 * time.Minute, time.Time{}, time.Time{}, 0, "8640 points at step 15m0s, at most 5000"},
		{"longer than 400 days", now.Add(-401 * day), now, day, time.Time{}, time.Time{}, 0, "longer than 400 days"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			res, err := plan(tc.from, tc.to, tc.step, now)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), ErrInvalid.Error()) {
					t.Fatalf("err %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !res.From.Equal(tc.wantFrom) || !res.To.Equal(tc.wantTo) || res.Step != tc.wantStep {
				t.Fatalf("got %s..%s step %v, want %s..%s step %v", res.From, res.To, res.Step, tc.wantFrom, tc.wantTo, tc.wantStep)
			}
		})
	}
}

// TestCorruptFile: a garbage history file is refused with the cure.
func TestCorruptFile(t *testing.T) {
	dir, clk := garbledHistory(t)
	_, err := Open(dir, Options{Now: clk.Now})
	if err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), "empty telemetry history") {
		t.Fatalf("Open of a corrupt file: %v", err)
	}
}

// garbledHistory is a directory whose history (one sample of d1) has
// been overwritten with garbage, and the clock it was written on.
func garbledHistory(t *testing.T) (dir string, clk *clock) {
	t.Helper()
	dir = t.TempDir()
	clk = &clock{t: base}
	h := open(t, dir, clk, Options{})
	recordAll(t, h, "d1", base, []in{{0, 20, 20, false, false, ""}})
	h.Close()
	garble(t, h.Path())
	return dir, clk
}

// garble overwrites the file at path with garbage of the same size.
func garble(t *testing.T, path string) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", path, fi.Mode().Perm())
	}
	junk := make([]byte, fi.Size())
	r := rand.New(rand.NewPCG(1, 2))
	for i := range junk {
		junk[i] = byte(r.Uint32())
	}
	if err := os.WriteFile(path, junk, 0o600); err != nil {
		t.Fatal(err)
	}
}

// testCompactBadValue: a stored value this version cannot read fails its
// device's compaction and query with a reason, and the other devices are
// compacted all the same.
func testCompactBadValue(t *testing.T, k *kit) {
	clk := &clock{t: base}
	h := k.open(t, k.place(t), clk, Options{})
	for _, id := range []string{"d1", "d2"} {
		recordAll(t, h, id, base, []in{{0, 20, 20, false, false, ""}, {time.Minute, 21, 20, false, false, ""}})
	}
	k.putRaw(t, h, "d1", base.Add(time.Second).UnixMilli(), []byte{flagTemp})
	if _, err := h.Query("d1", base, base.Add(time.Hour), time.Minute); err == nil || !strings.Contains(err.Error(), "bad stored value") {
		t.Fatalf("query of a bad value: %v", err)
	}
	clk.Set(base.Add(50 * time.Hour))
	if err := h.Compact(); err == nil || !strings.Contains(err.Error(), "compact d1") || strings.Contains(err.Error(), "d2") {
		t.Fatalf("compaction: %v, want d1's error only", err)
	}
	if raw, buckets := k.count(t, h, "d2"); raw != 0 || buckets != 1 {
		t.Fatalf("d2: %d raw, %d buckets; want compacted", raw, buckets)
	}
}
