// Package lograte keeps a failure that repeats on every attempt (a peer
// whose certificate is refused, retried twice a second) from either
// flooding the log or going quiet after its first line. Per key (a peer),
// a record goes out at most once per interval, and it says how many
// attempts it stands for: the ones held back since the previous record.
// Both binaries use it, so a persistent failure looks the same in either
// log: one WARN a minute with a count.
package lograte

import (
	"sync"
	"time"
)

// DefaultInterval is how often a persistent failure is reported: often
// enough that a person tailing the log sees it is still going on, rarely
// enough that a fleet of devices retrying twice a second stays readable.
const DefaultInterval = time.Minute

// forgetAfter, in intervals, is how long a key may stay silent before the
// limiter forgets it, so that keys of passing peers (remote addresses) do
// not pile up. A forgotten key's next occurrence is reported at once, as
// the first of a new failure.
const forgetAfter = 10

// Limiter decides, per key, which occurrences of a failure are logged. It
// is safe for concurrent use; the zero value is not: use New.
type Limiter struct {
	interval time.Duration
	now      func() time.Time

	mu    sync.Mutex
	keys  map[string]*entry
	swept time.Time
}

// entry is one key's state.
type entry struct {
	reported time.Time // when the last record went out
	seen     time.Time // when the last occurrence happened
	held     int       // occurrences since the last record, held back
}

// New returns a limiter reporting each key at most once per interval
// (DefaultInterval if not positive), reading the time from now (time.Now
// if nil).
func New(interval time.Duration, now func() time.Time) *Limiter {
	if interval <= 0 {
		interval = DefaultInterval
	}
	if now == nil {
		now = time.Now
	}
	return &Limiter{interval: interval, now: now, keys: map[string]*entry{}}
}

// Interval is the least time between two records of one key.
func (l *Limiter) Interval() time.Duration { return l.interval }

// Allow records one occurrence for key and reports whether to log it: the
// first occurrence of a key, and afterwards the first one at least an
// interval after the last record. n is how many occurrences that record
// stands for, this one included: 1 for the first, then the attempts made
// since the previous record. When ok is false, n is 0.
func (l *Limiter) Allow(key string) (ok bool, n int) {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sweep(now)
	e := l.keys[key]
	if e == nil {
		l.keys[key] = &entry{reported: now, seen: now}
		return true, 1
	}
	e.seen = now
	if now.Sub(e.reported) < l.interval {
		e.held++
		return false, 0
	}
	n = e.held + 1
	e.reported, e.held = now, 0
	return true, n
}

// Reset forgets key: its failure is over (the peer connected), so its next
// occurrence is a new failure and is logged at once.
func (l *Limiter) Reset(key string) {
	l.mu.Lock()
	delete(l.keys, key)
	l.mu.Unlock()
}

// sweep drops, at most once per interval, the keys silent for forgetAfter
// intervals. Called with l.mu held.
func (l *Limiter) sweep(now time.Time) {
	if now.Sub(l.swept) < l.interval {
		return
	}
	l.swept = now
	for k, e := range l.keys {
		if now.Sub(e.seen) >= forgetAfter*l.interval {
			delete(l.keys, k)
		}
	}
}
