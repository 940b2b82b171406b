package alert

import (
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

func TestSet(t *testing.T) {
	now := time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC)
	s := New(func() time.Time { return now })
	changes := 0
	s.OnChange(func() { changes++ })
	if got := s.List(); got == nil || len(got) != 0 || s.Codes() != nil {
		t.Fatalf("empty set: List %v Codes %v", got, s.Codes())
	}
	for _, step := range []struct {
		do      func() bool
		want    bool
		codes   []string
		changes int
	}{
		{func() bool { return s.Raise(protocol.AlertStorageError, "no space") }, true, []string{"storage_error"}, 1},
		{func() bool { now = now.Add(time.Minute); return s.Raise(protocol.AlertStorageError, "read-only") }, false, []string{"storage_error"}, 1},
		{func() bool { return s.Set(protocol.AlertSensorFault, true, "85.0") }, true, []string{"sensor_fault", "storage_error"}, 2},
		{func() bool { return s.Clear(protocol.AlertStorageError) }, true, []string{"sensor_fault"}, 3},
		{func() bool { return s.Clear(protocol.AlertStorageError) }, false, []string{"sensor_fault"}, 3},
		{func() bool { return s.Set(protocol.AlertSensorFault, false, "") }, true, nil, 4},
	} {
		if got := step.do(); got != step.want {
			t.Errorf("step reported %v, want %v", got, step.want)
		}
		if got := s.Codes(); !equal(got, step.codes) {
			t.Errorf("codes %v, want %v", got, step.codes)
		}
		if changes != step.changes {
			t.Errorf("%d changes, want %d", changes, step.changes)
		}
	}
	s.Raise(protocol.AlertTLSRefused, "first")
	first := s.List()[0].Since
	now = now.Add(time.Hour)
	s.Raise(protocol.AlertTLSRefused, "second")
	if a := s.List()[0]; a.Since != first || a.Detail != "second" {
		t.Errorf("re-raised alert %+v, want since %v with the latest detail", a, first)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}
