package schedule

import (
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

func sp(f float64) *float64 { return &f }

// every makes a schedule with the same entries every day.
func every(entries ...protocol.Entry) protocol.Schedule {
	s := protocol.Schedule{Enabled: true, Week: map[string][]protocol.Entry{}}
	for _, d := range protocol.Weekdays {
		s.Week[d] = entries
	}
	return s
}

func at(hhmm string, c float64) protocol.Entry { return protocol.Entry{At: hhmm, SetpointC: sp(c)} }

func load(t *testing.T, name string) *time.Location {
	t.Helper()
	loc, err := time.LoadLocation(name)
	if err != nil {
		t.Fatal(err)
	}
	return loc
}

// TestDaylightSaving: around every change of clocks in four zones, the
// instant each entry applies at, and the entry in force just before and
// after it. Dates are 2026's changes.
func TestDaylightSaving(t *testing.T) {
	s := every(at("01:30", 17), at("02:30", 18), at("03:30", 19), at("06:00", 21))
	for _, tc := range []struct {
		zone, date string
		// want maps each entry's wall time to when it applies, as an
		// RFC 3339 time in the zone.
		want map[string]string
	}{
		// Berlin forward 29 March at 02:00 → 03:00: 02:30 does not exist.
		{"Europe/Berlin", "2026-03-29", map[string]string{
			"01:30": "2026-03-29T01:30:00+01:00", "02:30": "2026-03-29T03:00:00+02:00",
			"03:30": "2026-03-29T03:30:00+02:00", "06:00": "2026-03-29T06:00:00+02:00"}},
		// Berlin back 25 October at 03:00 → 02:00: 02:30 happens twice; the first counts.
		{"Europe/Berlin", "2026-10-25", map[string]string{
			"01:30": "2026-10-25T01:30:00+02:00", "02:30": "2026-10-25T02:30:00+02:00",
			"03:30": "2026-10-25T03:30:00+01:00", "06:00": "2026-10-25T06:00:00+01:00"}},
		// New York forward 8 March at 02:00 → 03:00.
		{"America/New_York", "2026-03-08", map[string]string{
			"01:30": "2026-03-08T01:30:00-05:00", "02:30": "2026-03-08T03:00:00-04:00",
			"03:30": "2026-03-08T03:30:00-04:00"}},
		// New York back 1 November at 02:00 → 01:00: 01:30 happens twice.
		{"America/New_York", "2026-11-01", map[string]string{
			"01:30": "2026-11-01T01:30:00-04:00", "02:30": "2026-11-01T02:30:00-05:00"}},
		// Sydney back 5 April at 03:00 → 02:00: 02:30 happens twice.
		{"Australia/Sydney", "2026-04-05", map[string]string{
			"01:30": "2026-04-05T01:30:00+11:00", "02:30": "2026-04-05T02:30:00+11:00",
			"03:30": "2026-04-05T03:30:00+10:00"}},
		// Sydney forward 4 October at 02:00 → 03:00.
		{"Australia/Sydney", "2026-10-04", map[string]string{
			"01:30": "2026-10-04T01:30:00+10:00", "02:30": "2026-10-04T03:00:00+11:00",
			"03:30": "2026-10-04T03:30:00+11:00"}},
		// Tokyo has no daylight saving.
		{"Asia/Tokyo", "2026-03-29", map[string]string{
			"01:30": "2026-03-29T01:30:00+09:00", "02:30": "2026-03-29T02:30:00+09:00"}},
	} {
		loc := load(t, tc.zone)
		date, _ := time.ParseInLocation(time.DateOnly, tc.date, loc)
		y, m, d := date.Date()
		occ := occurrences(s, loc, y, m, d)
		for _, o := range occ {
			want, ok := tc.want[o.Entry.At]
			if !ok {
				continue
			}
			if got := o.Time.Format(time.RFC3339); got != want {
				t.Errorf("%s %s %s: applies at %s, want %s", tc.zone, tc.date, o.Entry.At, got, want)
			}
			// Just before it, the entry before is in force; at it, this one.
			if cur, _ := InForce(s, loc, o.Time); cur.Time != o.Time && cur.Entry.At != o.Entry.At {
				t.Errorf("%s %s: in force at %s is %v, want %s", tc.zone, tc.date, want, cur, o.Entry.At)
			}
			if nx, _ := Next(s, loc, o.Time.Add(-time.Second)); nx.Entry.At != o.Entry.At && !nx.Time.Equal(o.Time) {
				t.Errorf("%s %s: next before %s is %v", tc.zone, tc.date, want, nx)
			}
		}
	}
}

// The repeated hour applies an entry once: after its first occurrence,
// the next entry is the one after it, not its second wall-clock match.
func TestRepeatedHourOnce(t *testing.T) {
	loc := load(t, "Europe/Berlin")
	s := every(at("02:30", 18), at("06:00", 21))
	first := time.Date(2026, 10, 25, 0, 30, 0, 0, time.UTC) // 02:30 CEST
	o, ok := InForce(s, loc, first)
	if !ok || !o.Time.Equal(first) {
		t.Fatalf("in force at 02:30 CEST: %v", o)
	}
	second := first.Add(time.Hour) // 02:30 CET, the same wall clock again
	if o2, _ := InForce(s, loc, second); o2.Key() != o.Key() {
		t.Errorf("at the second 02:30 the entry in force is %v, want the same occurrence %v", o2, o)
	}
	n, _ := Next(s, loc, first)
	if n.Entry.At != "06:00" || n.Date != "2026-10-25" {
		t.Errorf("next after the first 02:30 is %v, want 06:00 the same day", n)
	}
}

// Two entries inside one skipped hour both land on the end of the gap;
// the later one is in force.
func TestTwoEntriesInTheGap(t *testing.T) {
	loc := load(t, "Europe/Berlin")
	s := every(at("02:10", 18), at("02:40", 19))
	end := time.Date(2026, 3, 29, 1, 0, 0, 0, time.UTC) // 03:00 CEST
	if o, _ := InForce(s, loc, end); o.Entry.At != "02:40" {
		t.Errorf("in force at the gap's end: %v, want 02:40", o)
	}
	if n, _ := Next(s, loc, end.Add(-time.Minute)); n.Entry.At != "02:40" || !n.Time.Equal(end) {
		t.Errorf("next before the gap: %v, want 02:40 at %v", n, end)
	}
}

// The week wraps: on Monday morning, Sunday night's entry is in force; a
// schedule with one entry a week finds it a week back.
func TestWeekWrap(t *testing.T) {
	loc := load(t, "Europe/Berlin")
	s := protocol.Schedule{Enabled: true, Week: map[string][]protocol.Entry{
		"mon": {at("07:00", 21)},
		"sun": {at("23:00", 16)},
	}}
	monEarly := time.Date(2026, 11, 30, 5, 0, 0, 0, loc) // Monday 05:00
	if o, _ := InForce(s, loc, monEarly); o.Entry.At != "23:00" || o.Date != "2026-11-29" {
		t.Errorf("Monday 05:00: %v, want Sunday 23:00", o)
	}
	if n, _ := Next(s, loc, monEarly); n.Entry.At != "07:00" || n.Date != "2026-11-30" {
		t.Errorf("next after Monday 05:00: %v", n)
	}
	sunLate := time.Date(2026, 12, 6, 23, 30, 0, 0, loc)
	if n, _ := Next(s, loc, sunLate); n.Date != "2026-12-07" || n.Entry.At != "07:00" {
		t.Errorf("next after Sunday 23:30: %v", n)
	}
	once := protocol.Schedule{Enabled: true, Week: map[string][]protocol.Entry{"wed": {at("12:00", 20)}}}
	wedMorning := time.Date(2026, 12, 2, 11, 0, 0, 0, loc)
	if o, ok := InForce(once, loc, wedMorning); !ok || o.Date != "2026-11-25" {
		t.Errorf("a weekly entry seen from an hour before it: %v %v, want last week's", o, ok)
	}
	if _, ok := InForce(protocol.Schedule{Enabled: true}, loc, wedMorning); ok {
		t.Error("an empty schedule has an entry in force")
	}
	if _, ok := Next(protocol.Schedule{Enabled: true}, loc, wedMorning); ok {
		t.Error("an empty schedule has a next entry")
	}
}

// Walking a whole year minute by minute would be slow; walking it entry
// by entry checks that Next always moves forward and InForce agrees with
// it, across both of a zone's changes.
func TestWalkAYear(t *testing.T) {
	for _, zone := range []string{"Europe/Berlin", "America/New_York", "Australia/Sydney", "Asia/Tokyo"} {
		loc := load(t, zone)
		s := every(at("00:00", 18), at("01:30", 17), at("02:30", 18), at("06:30", 21), at("22:00", 18))
		now := time.Date(2026, 1, 1, 0, 0, 0, 0, loc)
		end := now.AddDate(1, 0, 0)
		seen := map[string]bool{}
		n := 0
		for now.Before(end) {
			o, ok := Next(s, loc, now)
			if !ok || !o.Time.After(now) {
				t.Fatalf("%s: next after %v is %v", zone, now, o)
			}
			if cur, _ := InForce(s, loc, o.Time); cur.Key() != o.Key() {
				t.Fatalf("%s: at %v in force %v, want %v", zone, o.Time, cur, o)
			}
			if seen[o.Key()] {
				t.Fatalf("%s: %v applied twice", zone, o)
			}
			seen[o.Key()] = true
			now = o.Time
			n++
		}
		// Five entries a day, except where a gap put two on one instant.
		if n < 365*5-2 || n > 365*5 {
			t.Errorf("%s: %d occurrences in a year", zone, n)
		}
	}
}
