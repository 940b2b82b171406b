// Package storetest is the contract every controller store keeps, as tests
// run against each implementation: the bbolt file of package store and
// PostgreSQL (store/pgstore). A store-specific test (file modes, locks,
// migrations, raw corruption) stays with its store.
package storetest

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// Store is a store under test.
type Store interface {
	Put(devs ...store.Device) error
	Load() ([]store.Device, error)
	Delete(ids ...string) error
	Close() error
}

// Opener opens one store's location; called again, it opens the same
// location again (after the first was closed).
type Opener func() (Store, error)

// Replica is a controller-side replica with vc and props.
func Replica(vc protocol.Clock, props protocol.Props) *protocol.Replica {
	return &protocol.Replica{Side: protocol.ControllerSide, VC: vc, Props: props, Src: protocol.SrcController}
}

// Sample is two records: one with every field set, one empty.
func Sample() []store.Device {
	seen := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	return []store.Device{
		{
			ID: "d1",
			Replica: Replica(protocol.Clock{4, 2}, protocol.Props{
				protocol.PropSetpoint: {Val: 21.5, W: protocol.Clock{4, 2}},
				protocol.PropMode:     {Val: "heat", W: protocol.Clock{0, 1}},
			}),
			Owed:      true,
			Online:    true,
			LastSeen:  seen,
			Telemetry: json.RawMessage(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":20.31,"heat":true,"cool":false,"sensor_ok":true}`),
			Reported:  []protocol.Alert{{Code: protocol.AlertSensorFault, Since: seen.Add(-time.Minute), Detail: "no reading"}},
			Raised:    []protocol.Alert{{Code: protocol.AlertTLSRefused, Since: seen}},
		},
		{ID: "d2", Replica: Replica(protocol.Clock{}, protocol.Props{})},
	}
}

// Run runs every contract test; fresh returns an Opener of a new, empty
// location for each.
func Run(t *testing.T, fresh func(t *testing.T) Opener) {
	t.Run("PutLoadReopen", func(t *testing.T) { putLoadReopen(t, fresh(t)) })
	t.Run("PutRefusesBadRecords", func(t *testing.T) { putRefusesBadRecords(t, fresh) })
	t.Run("Delete", func(t *testing.T) { deleteRecords(t, fresh(t)) })
}

func mustOpen(t *testing.T, open Opener) Store {
	t.Helper()
	s, err := open()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// putLoadReopen: what Put stored is what Load returns, sorted by id, after
// the store is closed and opened again; a later Put replaces a record.
func putLoadReopen(t *testing.T, open Opener) {
	s := mustOpen(t, open)
	want := Sample()
	// Written in reverse order: Load sorts.
	if err := s.Put(want[1], want[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, open)
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, want)
	}

	d := want[0]
	d.Owed = false
	d.Raised = nil
	d.Replica = Replica(protocol.Clock{5, 2}, d.Replica.Props)
	if err := s.Put(d); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Owed || got[0].Replica.VC != (protocol.Clock{5, 2}) || got[0].Raised != nil {
		t.Fatalf("after replace: %+v", got[0])
	}
}

// putRefusesBadRecords: a batch with one bad record stores none of it.
func putRefusesBadRecords(t *testing.T, fresh func(t *testing.T) Opener) {
	tests := []struct {
		name string
		dev  store.Device
		want string
	}{
		{"bad id", store.Device{ID: "D1", Replica: Replica(protocol.Clock{}, nil)}, "invalid id"},
		{"controller id", store.Device{ID: "controller", Replica: Replica(protocol.Clock{}, nil)}, "reserved"},
		{"another controller's id", store.Device{ID: "controller-b", Replica: Replica(protocol.Clock{}, nil)}, "reserved"},
		{"no replica", store.Device{ID: "d1"}, "no replica"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := mustOpen(t, fresh(t))
			defer s.Close()
			err := s.Put(store.Device{ID: "ok", Replica: Replica(protocol.Clock{}, nil)}, tc.dev)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Put: %v, want an error with %q", err, tc.want)
			}
			got, err := s.Load()
			if err != nil || len(got) != 0 {
				t.Fatalf("after a refused Put: %+v, %v", got, err)
			}
		})
	}
}

// deleteRecords: Delete removes the records named, an unknown id is no
// error, the others stay, and it lasts across a reopen.
func deleteRecords(t *testing.T, open Opener) {
	s := mustOpen(t, open)
	all := Sample()
	if err := s.Put(all...); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("d1", "never-seen"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(); err != nil {
		t.Fatalf("Delete of nothing: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = mustOpen(t, open)
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, all[1:]) {
		t.Fatalf("after deleting d1: %+v, want %+v", got, all[1:])
	}
}
