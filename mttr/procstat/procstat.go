// Package procstat reads a process's CPU time and memory from Linux's /proc
// and condenses a series of such readings over a window of time: what the
// mttr harness reports of the harness, the broker and the controller
// (issue 15's steady-state targets: a share of one core, an RSS in MB),
// instead of an `awk /proc/PID/stat` loop beside the run.
//
// CPU is utime+stime of /proc/PID/stat: the whole process (every thread of
// it; the kernel sums the thread group's times there), in clock ticks of
// 1/100 s (USER_HZ, what `getconf CLK_TCK` says on Linux). Memory is VmRSS
// of /proc/PID/status, with its anonymous part (RssAnon: the heap, stacks)
// and its file-backed part (RssFile: the binary, memory-mapped files such
// as bbolt's).
package procstat

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// ClockTick is the unit of utime and stime in /proc/PID/stat: USER_HZ,
// which Linux fixes at 100 for user space whatever the kernel's own HZ.
const ClockTick = time.Second / 100

// Sample is one reading of one process.
type Sample struct {
	// At is when it was read.
	At time.Time
	// PID is the process read: a restarted broker is another process.
	PID int
	// CPU is the CPU time the process has used since it started, user
	// and system, every thread.
	CPU time.Duration
	// RSS is VmRSS in bytes; RSSAnon and RSSFile its anonymous and
	// file-backed parts (RssAnon, RssFile).
	RSS, RSSAnon, RSSFile int64
	// Since, on the first reading of a process started while it was
	// sampled (Target.Child, and each restart of it), is when it was not
	// running yet (the sampler's previous tick): all its CPU time was
	// used since.
	Since time.Time
}

// Read reads process pid now. A process that is gone gives an error that
// is os.ErrNotExist.
func Read(pid int) (Sample, error) {
	s := Sample{At: time.Now(), PID: pid}
	dir := "/proc/" + strconv.Itoa(pid)
	stat, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	if s.CPU, err = parseStat(stat); err != nil {
		return s, fmt.Errorf("process %d: %s/stat: %w", pid, dir, err)
	}
	status, err := os.ReadFile(dir + "/status")
	if err != nil {
		return s, fmt.Errorf("process %d: %w", pid, err)
	}
	if s.RSS, s.RSSAnon, s.RSSFile, err = parseStatus(status); err != nil {
		return s, fmt.Errorf("process %d: %s/status: %w", pid, dir, err)
	}
	return s, nil
}

// parseStat returns utime+stime (fields 14 and 15) of a /proc/PID/stat
// line. The command name (field 2) is in parentheses and may itself hold
// spaces and parentheses: the fields are counted from the last ')'.
func parseStat(b []byte) (time.Duration, error) {
	end := bytes.LastIndexByte(b, ')')
	if end < 0 {
		return 0, errors.New("no command name in parentheses")
	}
	// After ")": field 3 (state) onwards.
	fields := strings.Fields(string(b[end+1:]))
	const utime, stime = 14 - 3, 15 - 3
	if len(fields) <= stime {
		return 0, fmt.Errorf("%d fields after the command name, want at least %d", len(fields), stime+1)
	}
	var ticks int64
	for _, i := range []int{utime, stime} {
		v, err := strconv.ParseInt(fields[i], 10, 64)
		if err != nil || v < 0 {
			return 0, fmt.Errorf("field %d %q is not a count of clock ticks", i+3, fields[i])
		}
		ticks += v
	}
	return time.Duration(ticks) * ClockTick, nil
}

// parseStatus returns VmRSS, RssAnon and RssFile of /proc/PID/status, in
// bytes. A zombie has none of them: that is an error.
func parseStatus(b []byte) (rss, anon, file int64, err error) {
	want := map[string]*int64{"VmRSS": &rss, "RssAnon": &anon, "RssFile": &file}
	found := 0
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		p, wanted := want[key]
		if !ok || !wanted {
			continue
		}
		f := strings.Fields(val)
		if len(f) != 2 || f[1] != "kB" {
			return 0, 0, 0, fmt.Errorf("%s: %q is not a size in kB", key, strings.TrimSpace(val))
		}
		kb, perr := strconv.ParseInt(f[0], 10, 64)
		if perr != nil || kb < 0 {
			return 0, 0, 0, fmt.Errorf("%s: %q is not a size in kB", key, strings.TrimSpace(val))
		}
		*p = kb << 10
		found++
	}
	if found != len(want) {
		return 0, 0, 0, errors.New("no VmRSS, RssAnon and RssFile (a zombie, or not Linux ≥ 4.5)")
	}
	return rss, anon, file, nil
}

var nan = math.NaN()

// Usage is what a process used over a window.
type Usage struct {
	// Samples in the window, and the time CPU is measured over: from
	// the first sample to the last (from Since of a child's first).
	Samples int
	Span    time.Duration
	// CPUTime is the CPU time used over Span; CPU the same as a share
	// of one core (1 = one core busy all the time), NaN when Span is 0.
	CPUTime time.Duration
	CPU     float64
	// RSS mean and max over the samples, with the mean anonymous and
	// file-backed parts; bytes.
	RSSMean, RSSMax          int64
	RSSAnonMean, RSSFileMean int64
}

// Series is the samples of one process role over a run (the broker, the
// controller), oldest first. Its PID changes when the process is
// restarted; while it is not running there is no sample.
type Series []Sample

// Window condenses the samples taken in [from, to]. The CPU time is
// counted over the intervals between a sample and the one before it, where
// both are in the window: the difference of their CPU times for one
// process; where the PID changed (the process was restarted in between),
// the new process's whole CPU time, since it started after the earlier
// sample (the old one's last moments are lost: at most one sampling
// interval). A process's first sample counts its whole CPU time since
// Since when it has one (a child started while sampled), and is only the
// starting point otherwise.
func (s Series) Window(from, to time.Time) Usage {
	var u Usage
	var anon, file, rss int64
	in := func(t time.Time) bool { return !t.IsZero() && !t.Before(from) && !t.After(to) }
	for i := range s {
		x := &s[i]
		if !in(x.At) {
			continue
		}
		u.Samples++
		rss += x.RSS
		anon += x.RSSAnon
		file += x.RSSFile
		u.RSSMax = max(u.RSSMax, x.RSS)
		switch {
		case i > 0 && in(s[i-1].At) && s[i-1].PID == x.PID:
			u.CPUTime += max(0, x.CPU-s[i-1].CPU)
			u.Span += x.At.Sub(s[i-1].At)
		case i > 0 && in(s[i-1].At):
			u.CPUTime += x.CPU
			u.Span += x.At.Sub(s[i-1].At)
		case i == 0 && in(x.Since):
			u.CPUTime += x.CPU
			u.Span += x.At.Sub(x.Since)
		}
	}
	u.CPU = nan
	if u.Samples == 0 {
		return u
	}
	n := int64(u.Samples)
	u.RSSMean, u.RSSAnonMean, u.RSSFileMean = rss/n, anon/n, file/n
	if u.Span > 0 {
		u.CPU = u.CPUTime.Seconds() / u.Span.Seconds()
	}
	return u
}

// CPUBetween is the CPU time the process used in [from, to]. Each
// interval between two readings counts in proportion to its overlap
// with the window, its CPU taken as spread evenly over it: a window of a
// few seconds sampled every second would otherwise gain or lose up to an
// interval at each end. A reading with Since counts all its CPU time over
// [Since, At]; a process's first reading without it is only a starting
// point.
func (s Series) CPUBetween(from, to time.Time) time.Duration {
	var total float64
	for i, x := range s {
		var lo time.Time
		var cpu time.Duration
		switch {
		case !x.Since.IsZero():
			lo, cpu = x.Since, x.CPU
		case i > 0 && s[i-1].PID == x.PID:
			lo, cpu = s[i-1].At, max(0, x.CPU-s[i-1].CPU)
		default:
			continue
		}
		if !x.At.After(lo) {
			continue
		}
		a, b := lo, x.At
		if a.Before(from) {
			a = from
		}
		if b.After(to) {
			b = to
		}
		if b.After(a) {
			total += float64(cpu) * float64(b.Sub(a)) / float64(x.At.Sub(lo))
		}
	}
	return time.Duration(total)
}

// Add combines two windows' usage (the steady windows of several
// cycles): CPU time over the summed spans, RSS means weighted by samples.
func (u Usage) Add(v Usage) Usage {
	if u.Samples == 0 {
		return v
	}
	if v.Samples == 0 {
		return u
	}
	n, m := int64(u.Samples), int64(v.Samples)
	w := Usage{
		Samples:     u.Samples + v.Samples,
		Span:        u.Span + v.Span,
		CPUTime:     u.CPUTime + v.CPUTime,
		CPU:         nan,
		RSSMax:      max(u.RSSMax, v.RSSMax),
		RSSMean:     (u.RSSMean*n + v.RSSMean*m) / (n + m),
		RSSAnonMean: (u.RSSAnonMean*n + v.RSSAnonMean*m) / (n + m),
		RSSFileMean: (u.RSSFileMean*n + v.RSSFileMean*m) / (n + m),
	}
	if w.Span > 0 {
		w.CPU = w.CPUTime.Seconds() / w.Span.Seconds()
	}
	return w
}
