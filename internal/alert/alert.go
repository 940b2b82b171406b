// Package alert keeps the set of conditions that need a person, for one
// device (the thermostat's own) or one device as the controller sees it.
// The codes are protocol's; this is only their bookkeeping, so each place
// that detects a condition raises and clears it the same way.
package alert

import (
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// Set is a set of alerts by code. It is safe for concurrent use; the zero
// value is not: use New.
type Set struct {
	now func() time.Time

	mu     sync.Mutex
	alerts map[string]protocol.Alert
	change func()
}

// New returns an empty set stamping alerts with now (time.Now if nil).
func New(now func() time.Time) *Set {
	if now == nil {
		now = time.Now
	}
	return &Set{now: now, alerts: map[string]protocol.Alert{}}
}

// OnChange registers fn to be called (without the set's lock held) after
// an alert is raised or cleared, so telemetry can go out at once.
func (s *Set) OnChange(fn func()) {
	s.mu.Lock()
	s.change = fn
	s.mu.Unlock()
}

// Raise records code with detail. It reports whether the alert is new; a
// raised alert keeps its first Since and takes the latest detail.
func (s *Set) Raise(code, detail string) bool {
	s.mu.Lock()
	a, had := s.alerts[code]
	if !had {
		a = protocol.Alert{Code: code, Since: s.now().UTC()}
	}
	a.Detail = detail
	s.alerts[code] = a
	fn := s.change
	s.mu.Unlock()
	if !had && fn != nil {
		fn()
	}
	return !had
}

// Clear removes code and reports whether it was raised.
func (s *Set) Clear(code string) bool {
	s.mu.Lock()
	_, had := s.alerts[code]
	delete(s.alerts, code)
	fn := s.change
	s.mu.Unlock()
	if had && fn != nil {
		fn()
	}
	return had
}

// Set raises or clears code by cond; it reports whether that changed.
func (s *Set) Set(code string, cond bool, detail string) bool {
	if cond {
		return s.Raise(code, detail)
	}
	return s.Clear(code)
}

// Has reports whether code is raised.
func (s *Set) Has(code string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.alerts[code]
	return ok
}

// List returns the alerts sorted by code; never nil, so JSON shows [].
func (s *Set) List() []protocol.Alert {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]protocol.Alert, 0, len(s.alerts))
	for _, code := range slices.Sorted(maps.Keys(s.alerts)) {
		out = append(out, s.alerts[code])
	}
	return out
}

// Codes returns the raised codes, sorted; nil when there are none, so
// telemetry leaves the field out.
func (s *Set) Codes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.alerts) == 0 {
		return nil
	}
	return slices.Sorted(maps.Keys(s.alerts))
}
