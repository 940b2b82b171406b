package procstat

import (
	"bufio"
	"errors"
	"math"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
)

// rusageCPU is user+system time of a getrusage result.
func rusageCPU(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// TestReadSelf reads this test's own process after burning CPU on several
// threads, and checks the figure against getrusage(RUSAGE_SELF), which
// counts every thread: the /proc figure lies between the usage before and
// after it, to the clock tick it is counted in.
func TestReadSelf(t *testing.T) {
	burn := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); {
		}
	}
	done := make(chan struct{})
	for range 3 {
		go func() { burn(150 * time.Millisecond); done <- struct{}{} }()
	}
	for range 3 {
		<-done
	}
	var before, after syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &before); err != nil {
		t.Fatal(err)
	}
	s, err := Read(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &after); err != nil {
		t.Fatal(err)
	}
	lo, hi := rusageCPU(&before)-2*ClockTick, rusageCPU(&after)+2*ClockTick
	if s.CPU < lo || s.CPU > hi {
		t.Errorf("CPU %v from /proc, getrusage %v..%v", s.CPU, rusageCPU(&before), rusageCPU(&after))
	}
	if s.CPU < 100*time.Millisecond {
		t.Errorf("CPU %v after burning about 450 ms on three threads", s.CPU)
	}
	// Maxrss is the peak RSS in KiB.
	if s.RSS <= 0 || s.RSSAnon <= 0 || s.RSSFile <= 0 || s.RSSAnon+s.RSSFile > s.RSS || s.RSS > after.Maxrss<<10 {
		t.Errorf("RSS %d (anonymous %d, file %d), peak %d", s.RSS, s.RSSAnon, s.RSSFile, after.Maxrss<<10)
	}
	if s.PID != os.Getpid() || time.Since(s.At) > time.Minute {
		t.Errorf("sample %+v", s)
	}
}

// TestSampleChild samples a child, started after the sampler, that burns
// CPU and then sleeps, and checks what the sampler saw against the
// child's own accounting (its rusage, read when it is reaped): the window
// over every sample holds the child's whole CPU time, from before it
// started; a window from its first sample on holds that less what the
// first reading had; and a process gone reads as os.ErrNotExist.
func TestSampleChild(t *testing.T) {
	var pid atomic.Int64
	s := Start(20*time.Millisecond, Target{Name: "child", Role: "sh", PID: func() int { return int(pid.Load()) }, Child: true})
	defer s.Stop()
	// The sampler ticks with no child yet.
	testenv.WaitFor(t, "a tick with no child", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.lastTick.After(time.Now().Add(-10 * time.Millisecond))
	})
	// exec keeps the process (and its CPU time): the sleep is the
	// same process that counted.
	cmd := exec.Command("sh", "-c", `i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; echo burnt; exec sleep 60`)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid.Store(int64(cmd.Process.Pid))
	// Since is a moment the target had no process.
	stored := time.Now()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || line != "burnt\n" {
		t.Fatalf("child said %q: %v", line, err)
	}
	burnt := time.Now()
	// Two samples after the burn, so the last reading holds all of it.
	testenv.WaitFor(t, "two samples of the child after its burn", func() bool {
		_, series := s.Snapshot()
		n := 0
		for _, x := range series[0] {
			if x.At.After(burnt) {
				n++
			}
		}
		return n >= 2
	})
	targets, series := s.Stop()
	if len(targets) != 1 || targets[0].Name != "child" || len(series) != 1 {
		t.Fatalf("targets %+v, %d series", targets, len(series))
	}
	ser := series[0]
	first, last := ser[0], ser[len(ser)-1]

	cmd.Process.Kill()
	cmd.Wait()
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	total := rusageCPU(ru)
	if d := last.CPU - total; d < -2*ClockTick || d > 2*ClockTick {
		t.Errorf("last reading %v, the child's rusage %v", last.CPU, total)
	}
	if total < 50*time.Millisecond {
		t.Errorf("the child used only %v: the burn did not burn", total)
	}
	if first.Since.IsZero() || first.Since.After(stored) || !ser[1].Since.IsZero() {
		t.Errorf("first reading since %v, the child's PID given at %v; the second's since %v", first.Since, stored, ser[1].Since)
	}
	whole := ser.Window(time.Time{}, last.At)
	if d := whole.CPUTime - total; whole.Samples != len(ser) || d < -2*ClockTick || d > 2*ClockTick || whole.Span != last.At.Sub(first.Since) {
		t.Errorf("window over everything %+v, the child's rusage %v, since %v", whole, total, first.Since)
	}
	u := ser.Window(first.At, last.At)
	if u.Samples != len(ser) || u.CPUTime != last.CPU-first.CPU || u.Span != last.At.Sub(first.At) {
		t.Errorf("window %+v over %d samples, first %+v, last %+v", u, len(ser), first, last)
	}
	if want := u.CPUTime.Seconds() / u.Span.Seconds(); math.Abs(u.CPU-want) > 1e-9 || u.CPU > 1.2 {
		t.Errorf("CPU %v of a core, want %v", u.CPU, want)
	}
	if u.RSSMax <= 0 || u.RSSMean <= 0 || u.RSSMean > u.RSSMax {
		t.Errorf("RSS mean %d, max %d", u.RSSMean, u.RSSMax)
	}
	if _, err := Read(int(pid.Load())); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("reading a reaped child: %v, want ErrNotExist", err)
	}
}

func TestParseStat(t *testing.T) {
	// Fields 3..: state ppid pgrp session tty tpgid flags minflt cminflt
	// majflt cmajflt utime stime ...
	tail := " S 1 2 3 0 -1 4194560 10 0 0 0 250 37 0 0 20 0 4 0 100 1000 50"
	cases := []struct {
		name, line string
		want       time.Duration
		wantErr    string
	}{
		{"plain", "123 (mosquitto)" + tail, 2870 * time.Millisecond, ""},
		{"name with spaces and parentheses", "123 (a) b (c) d)" + tail, 2870 * time.Millisecond, ""},
		{"no name", "123 mosquitto" + tail, 0, "no command name"},
		{"cut short", "123 (x) S 1 2 3", 0, "fields after the command name"},
		{"not a number", "123 (x) S 1 2 3 0 -1 4194560 10 0 0 0 ab 37 0", 0, `field 14 "ab"`},
		{"negative", "123 (x) S 1 2 3 0 -1 4194560 10 0 0 0 5 -37 0", 0, `field 15 "-37"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseStat([]byte(c.line))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || got != c.want {
				t.Fatalf("%v, %v; want %v", got, err, c.want)
			}
		})
	}
}

func TestParseStatus(t *testing.T) {
	cases := []struct {
		name, text      string
		rss, anon, file int64
		wantErr         string
	}{
		{"process", "Name:\tmosquitto\nVmPeak:\t  20000 kB\nVmRSS:\t    8200 kB\nRssAnon:\t    1000 kB\nRssFile:\t    7000 kB\nRssShmem:\t     200 kB\nThreads:\t1\n",
			8200 << 10, 1000 << 10, 7000 << 10, ""},
		{"zombie", "Name:\tmosquitto\nState:\tZ (zombie)\nThreads:\t1\n", 0, 0, 0, "zombie"},
		{"no unit", "VmRSS:\t8200\nRssAnon:\t1 kB\nRssFile:\t1 kB\n", 0, 0, 0, `VmRSS: "8200"`},
		{"not a number", "VmRSS:\tlots kB\nRssAnon:\t1 kB\nRssFile:\t1 kB\n", 0, 0, 0, `VmRSS: "lots kB"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rss, anon, file, err := parseStatus([]byte(c.text))
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("err %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil || rss != c.rss || anon != c.anon || file != c.file {
				t.Fatalf("%d %d %d, %v; want %d %d %d", rss, anon, file, err, c.rss, c.anon, c.file)
			}
		})
	}
}

// TestWindow is the window's arithmetic on series shaped as the harness
// sees them: one process throughout, a broker restarted (another PID), a
// window holding one sample or none.
func TestWindow(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	at := func(s int) time.Time { return t0.Add(time.Duration(s) * time.Second) }
	mb := int64(1 << 20)
	x := func(s, pid int, cpuMS int, rssMB int64) Sample {
		return Sample{At: at(s), PID: pid, CPU: time.Duration(cpuMS) * time.Millisecond, RSS: rssMB * mb, RSSAnon: rssMB * mb / 2, RSSFile: rssMB * mb / 4}
	}
	steady := Series{x(0, 7, 1000, 100), x(1, 7, 1250, 110), x(2, 7, 1500, 120), x(3, 7, 1750, 130), x(4, 7, 2000, 140)}
	restarted := Series{x(0, 7, 1000, 100), x(1, 7, 1100, 100), x(3, 9, 300, 40), x(4, 9, 500, 60)}
	// A child first read 1 s after the tick that saw it not running.
	child := Series{x(1, 7, 400, 10), x(2, 7, 600, 20), x(3, 7, 700, 30)}
	child[0].Since = at(0)
	cases := []struct {
		name     string
		s        Series
		from, to time.Time
		samples  int
		cpuTime  time.Duration
		cpu      float64 // NaN: not measured
		mean     int64
		maxRSS   int64
	}{
		{"whole", steady, at(0), at(4), 5, time.Second, 0.25, 120 * mb, 140 * mb},
		{"the last half", steady, at(2), at(4), 3, 500 * time.Millisecond, 0.25, 130 * mb, 140 * mb},
		{"bounds are inclusive, outside excluded", steady, at(1).Add(-time.Millisecond), at(3).Add(time.Millisecond), 3, 500 * time.Millisecond, 0.25, 120 * mb, 130 * mb},
		{"one sample: no CPU", steady, at(2), at(2), 1, 0, math.NaN(), 120 * mb, 120 * mb},
		{"empty", steady, at(10), at(20), 0, 0, math.NaN(), 0, 0},
		// 100 ms of the first process, then the new one's whole 300 ms
		// since it started, then 200 ms more: 600 ms over 4 s.
		{"restarted in between", restarted, at(0), at(4), 4, 600 * time.Millisecond, 0.15, 75 * mb, 100 * mb},
		{"after the restart", restarted, at(3), at(4), 2, 200 * time.Millisecond, 0.2, 50 * mb, 60 * mb},
		// Its whole 700 ms over the 3 s since it was not running.
		{"a child, from before it started", child, at(0), at(3), 3, 700 * time.Millisecond, 0.7 / 3, 20 * mb, 30 * mb},
		{"a child, from its first reading", child, at(1), at(3), 3, 300 * time.Millisecond, 0.15, 20 * mb, 30 * mb},
		{"a child, later", child, at(2), at(3), 2, 100 * time.Millisecond, 0.1, 25 * mb, 30 * mb},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			u := c.s.Window(c.from, c.to)
			cpuOK := math.IsNaN(c.cpu) && math.IsNaN(u.CPU) || math.Abs(u.CPU-c.cpu) < 1e-9
			if u.Samples != c.samples || u.CPUTime != c.cpuTime || !cpuOK || u.RSSMean != c.mean || u.RSSMax != c.maxRSS {
				t.Fatalf("%+v; want %d samples, CPU %v = %v of a core, RSS mean %d max %d", u, c.samples, c.cpuTime, c.cpu, c.mean, c.maxRSS)
			}
			if u.Samples > 0 && (u.RSSAnonMean != u.RSSMean/2 || u.RSSFileMean != u.RSSMean/4) {
				t.Errorf("anonymous %d, file %d of mean %d", u.RSSAnonMean, u.RSSFileMean, u.RSSMean)
			}
		})
	}
	// Two cycles' windows: CPU over the summed spans, RSS weighted by
	// samples.
	a, b := steady.Window(at(0), at(2)), restarted.Window(at(3), at(4))
	sum := a.Add(b)
	if sum.Samples != 5 || sum.Span != 3*time.Second || sum.CPUTime != 700*time.Millisecond ||
		math.Abs(sum.CPU-0.7/3) > 1e-9 || sum.RSSMax != 120*mb || sum.RSSMean != (330+100)*mb/5 {
		t.Errorf("sum %+v", sum)
	}
	if got := a.Add(Usage{CPU: math.NaN()}); got != a {
		t.Errorf("adding an empty window: %+v", got)
	}
}

// TestCPUBetween: a window's CPU time with its edges inside intervals,
// prorated, and a restart's whole CPU time spread over [Since, At].
func TestCPUBetween(t *testing.T) {
	t0 := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	x := func(ms, pid, cpuMS int) Sample {
		return Sample{At: at(ms), PID: pid, CPU: time.Duration(cpuMS) * time.Millisecond}
	}
	steady := Series{x(0, 7, 1000), x(1000, 7, 1400), x(2000, 7, 1600)}
	// Killed after 1000, restarted; first read at 4000, its tick before at 3000.
	restarted := Series{x(0, 7, 1000), x(1000, 7, 1100), x(4000, 9, 500), x(5000, 9, 900)}
	restarted[2].Since = at(3000)
	cases := []struct {
		name     string
		s        Series
		from, to int // ms
		want     time.Duration
	}{
		{"whole", steady, 0, 2000, 600 * time.Millisecond},
		{"inside one interval: a quarter of its 400 ms", steady, 250, 500, 100 * time.Millisecond},
		{"across a reading: half of 400 and half of 200", steady, 500, 1500, 300 * time.Millisecond},
		{"before the first reading: nothing", steady, -1000, 0, 0},
		{"past the last reading: nothing", steady, 2000, 9000, 0},
		{"the harness's first reading is a starting point only", Series{x(1000, 7, 5000)}, 0, 2000, 0},
		{"down: nothing", restarted, 1000, 3000, 0},
		{"the restart's 500 ms over [3000, 4000], then 400 ms", restarted, 3500, 5000, 650 * time.Millisecond},
		{"from the return", restarted, 3000, 4500, 700 * time.Millisecond},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := c.s.CPUBetween(at(c.from), at(c.to))
			if d := got - c.want; d < -time.Microsecond || d > time.Microsecond {
				t.Fatalf("CPUBetween(%d ms, %d ms) = %v, want %v", c.from, c.to, got, c.want)
			}
		})
	}
}
