// Package schedule evaluates a week program (protocol.Schedule) on the
// device: which entry is in force at a time, and which comes next. It is
// pure: a function of the schedule, its zone and a time, so every rule of
// PROTOCOL.md about wall-clock times is a table test here, and the agent
// only asks it questions on its injected clock.
//
// Times are wall-clock times in the schedule's zone. An entry inside a
// skipped hour (clocks forward) applies at the first instant after the
// gap; an entry inside a repeated hour (clocks back) applies once, at its
// first occurrence.
package schedule

import (
	"fmt"
	"slices"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// Occurrence is one firing of a schedule entry: an entry on one local
// date.
type Occurrence struct {
	Date  string    // the local date the entry belongs to, "2006-01-02"
	Time  time.Time // the instant it applies
	Entry protocol.Entry
}

// Key identifies the occurrence and what it sets. The device remembers the
// key of the last entry it applied: an occurrence with the same key is not
// applied again, so a hold survives a restart, while an edited entry (same
// time, another target) is a new one.
func (o Occurrence) Key() string {
	return fmt.Sprintf("%sT%s=%s", o.Date, o.Entry.At, o.Entry.Target())
}

func (o Occurrence) String() string {
	return fmt.Sprintf("%s %s (%s)", o.Date, o.Entry.At, o.Entry.Target())
}

// lookDays is how far InForce looks back and Next ahead: a week, and one
// day more so an entry of the same weekday a week ago is seen.
const lookDays = 8

// InForce returns the entry in force at now: the latest occurrence at or
// before now, looking back through the week. It reports false for a
// schedule with no entries. Whether the schedule is enabled is the
// caller's business.
func InForce(s protocol.Schedule, loc *time.Location, now time.Time) (Occurrence, bool) {
	var best Occurrence
	found := false
	y, m, d := now.In(loc).Date()
	for back := lookDays; back >= 0; back-- {
		for _, o := range occurrences(s, loc, y, m, d-back) {
			if o.Time.After(now) {
				continue
			}
			// Ties (two entries in one skipped hour) go to the later entry.
			if !found || !o.Time.Before(best.Time) {
				best, found = o, true
			}
		}
	}
	return best, found
}

// Next returns the first occurrence after now, or false for a schedule
// with no entries.
func Next(s protocol.Schedule, loc *time.Location, now time.Time) (Occurrence, bool) {
	var best Occurrence
	found := false
	y, m, d := now.In(loc).Date()
	for ahead := 0; ahead <= lookDays; ahead++ {
		for _, o := range occurrences(s, loc, y, m, d+ahead) {
			if !o.Time.After(now) {
				continue
			}
			if !found || o.Time.Before(best.Time) || o.Time.Equal(best.Time) {
				best, found = o, true
			}
		}
		if found {
			return best, true
		}
	}
	return best, found
}

// occurrences returns the entries of the local date y-m-d (normalized, so
// d may be out of range) with the instants they apply at, in day order.
func occurrences(s protocol.Schedule, loc *time.Location, y int, m time.Month, d int) []Occurrence {
	day := time.Date(y, m, d, 12, 0, 0, 0, time.UTC) // noon: only the date matters
	y, m, d = day.Date()
	entries := s.Week[weekday(day.Weekday())]
	out := make([]Occurrence, 0, len(entries))
	for _, e := range entries {
		min := e.Minute()
		out = append(out, Occurrence{
			Date:  day.Format(time.DateOnly),
			Time:  instant(loc, y, m, d, min/60, min%60),
			Entry: e,
		})
	}
	return out
}

func weekday(w time.Weekday) string {
	return protocol.Weekdays[(int(w)+6)%7] // Weekdays starts on Monday
}

// instant is when the wall-clock time h:mi of the local date y-m-d happens
// in loc: its first occurrence when the clocks go back, the first instant
// after the gap when it falls in skipped time.
func instant(loc *time.Location, y int, m time.Month, d, h, mi int) time.Time {
	wall := time.Date(y, m, d, h, mi, 0, 0, time.UTC)
	probe := time.Date(y, m, d, h, mi, 0, 0, loc)
	// Transitions move the offset by at most a few hours; the offsets in
	// force around the probe are every way the wall time can map.
	var offsets []int
	for _, t := range []time.Time{probe.Add(-3 * time.Hour), probe, probe.Add(3 * time.Hour)} {
		if _, off := t.Zone(); !slices.Contains(offsets, off) {
			offsets = append(offsets, off)
		}
	}
	var best time.Time
	for _, off := range offsets {
		u := wall.Add(-time.Duration(off) * time.Second)
		if wallOf(u, loc).Equal(wall) && (best.IsZero() || u.Before(best)) {
			best = u
		}
	}
	if !best.IsZero() {
		return best.In(loc)
	}
	// Skipped: the first instant whose wall clock is at or past h:mi.
	lo, hi := probe.Add(-3*time.Hour), probe.Add(3*time.Hour)
	for hi.Sub(lo) > time.Second {
		mid := lo.Add(hi.Sub(lo) / 2)
		if wallOf(mid, loc).Before(wall) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi.Truncate(time.Second).In(loc)
}

// wallOf returns u's wall clock in loc, as a UTC time with the same
// reading, so wall clocks compare as instants do.
func wallOf(u time.Time, loc *time.Location) time.Time {
	l := u.In(loc)
	y, m, d := l.Date()
	h, mi, s := l.Clock()
	return time.Date(y, m, d, h, mi, s, l.Nanosecond(), time.UTC)
}
