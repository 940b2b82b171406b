package lograte

import (
	"fmt"
	"testing"
	"time"
)

// fakeClock is a time that moves only when a step says so.
type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestAllow(t *testing.T) {
	type step struct {
		after time.Duration // the clock moves this much first
		key   string
		reset bool // Reset(key) instead of Allow(key)
		ok    bool
		n     int
	}
	const s = time.Second
	cases := []struct {
		name  string
		steps []step
	}{
		{"first occurrence is reported at once", []step{
			{0, "a", false, true, 1},
		}},
		{"retries twice a second: one record a minute, with the attempts since", []step{
			{0, "a", false, true, 1},
			{500 * time.Millisecond, "a", false, false, 0},
			{500 * time.Millisecond, "a", false, false, 0},
			{58 * s, "a", false, false, 0}, // 59 s after the first record
			{s, "a", false, true, 4},       // 60 s: this one and the 3 held back
			{s, "a", false, false, 0},
			{60 * s, "a", false, true, 2},
		}},
		{"keys are independent", []step{
			{0, "a", false, true, 1},
			{s, "b", false, true, 1},
			{s, "a", false, false, 0},
			{s, "b", false, false, 0},
		}},
		{"a quiet key is reported at its next occurrence, counting the held back", []step{
			{0, "a", false, true, 1},
			{s, "a", false, false, 0},
			{5 * time.Minute, "a", false, true, 2},
		}},
		{"reset: the failure ended, the next one is new", []step{
			{0, "a", false, true, 1},
			{s, "a", false, false, 0},
			{s, "a", true, false, 0},
			{s, "a", false, true, 1},
		}},
		{"a key silent for ten intervals is forgotten", []step{
			{0, "a", false, true, 1},
			{s, "a", false, false, 0},
			{10 * time.Minute, "b", false, true, 1}, // sweeps "a" with its held-back attempt
			{s, "a", false, true, 1},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &fakeClock{t: time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)}
			l := New(time.Minute, c.now)
			for i, st := range tc.steps {
				c.t = c.t.Add(st.after)
				if st.reset {
					l.Reset(st.key)
					continue
				}
				ok, n := l.Allow(st.key)
				if ok != st.ok || n != st.n {
					t.Fatalf("step %d: Allow(%q) = %v, %d; want %v, %d", i, st.key, ok, n, st.ok, st.n)
				}
			}
		})
	}
}

// TestAllowBoundsKeys: keys of peers that came once and left (remote
// addresses of a scan) do not accumulate.
func TestAllowBoundsKeys(t *testing.T) {
	c := &fakeClock{t: time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)}
	l := New(time.Minute, c.now)
	for i := range 1000 {
		l.Allow(fmt.Sprintf("10.0.%d.%d", i/256, i%256))
		c.t = c.t.Add(time.Second)
	}
	l.mu.Lock()
	n := len(l.keys)
	l.mu.Unlock()
	// At most the keys of the last ten intervals (plus one sweep's lag).
	if n > 11*60 {
		t.Fatalf("%d keys kept, want at most %d", n, 11*60)
	}
}

func TestDefaults(t *testing.T) {
	if l := New(0, nil); l.Interval() != DefaultInterval {
		t.Fatalf("interval %v, want %v", l.Interval(), DefaultInterval)
	}
}
