package pgstore

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// testPutBased: a write whose controller counter was not read from the
// stored record is refused, whatever its clock.
func testPutBased(t *testing.T, pg *testenv.Postgres) {
	s := open(t, pg.NewDatabase(t))
	if err := s.Put(dev("d1", protocol.Clock{3, 1})); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		base map[string]uint64
		vc   protocol.Clock
		ok   bool
	}{
		{"read the stored counter", map[string]uint64{"d1": 3}, protocol.Clock{4, 2}, true},
		{"counted from an older one", map[string]uint64{"d1": 3}, protocol.Clock{5, 9}, false}, // stored is 4 now
		{"no base for a stored record", nil, protocol.Clock{9, 9}, false},
		{"read the new counter", map[string]uint64{"d1": 4}, protocol.Clock{4, 3}, true},
		{"clock behind", map[string]uint64{"d1": 4}, protocol.Clock{4, 1}, false},
	}
	for _, tc := range tests {
		err := s.PutBased(tc.base, dev("d1", tc.vc))
		if tc.ok != (err == nil) || (err != nil && !errors.Is(err, ErrClockBehind)) {
			t.Errorf("%s: err %v, want ok %v (or ErrClockBehind)", tc.name, err, tc.ok)
		}
	}
	if err := s.PutBased(nil, dev("d2", protocol.Clock{1, 0})); err != nil {
		t.Errorf("a new record without a base: %v", err)
	}
	// Update holds the row: the record it gets is the stored one.
	err := s.Update("d1", func(st store.Device, ok bool) (store.Device, error) {
		if !ok || st.Replica.VC != (protocol.Clock{4, 3}) {
			t.Errorf("Update read %v %v, want [4,3]", st.Replica.VC, ok)
		}
		return dev("d1", protocol.Clock{5, 3}), nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if d, ok, err := s.Get("d1"); err != nil || !ok || d.Replica.VC != (protocol.Clock{5, 3}) {
		t.Fatalf("after Update: %v %v %v", d.Replica, ok, err)
	}
}

// testLeases: renewals by the database's clock; an instance that stops
// renewing drops out of the live set when its lease ends, one that
// releases at once.
func testLeases(t *testing.T, pg *testenv.Postgres) {
	s := open(t, pg.NewDatabase(t))
	if _, err := s.Renew(ctx, "a", time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Renew(ctx, "c", time.Hour); err != nil {
		t.Fatal(err)
	}
	live, err := s.Renew(ctx, "b", 300*time.Millisecond)
	if err != nil || !slices.Equal(live, []string{"a", "b", "c"}) {
		t.Fatalf("live %v %v, want [a b c]", live, err)
	}
	testenv.Eventually(t, testenv.WaitTimeout, "b's lease to end", func() (bool, string) {
		live, err := s.Renew(ctx, "a", time.Hour)
		return err == nil && slices.Equal(live, []string{"a", "c"}), fmt.Sprint(live, err)
	})
	if err := s.Release(ctx, "c"); err != nil {
		t.Fatal(err)
	}
	if live, err := s.Renew(ctx, "a", time.Hour); err != nil || !slices.Equal(live, []string{"a"}) {
		t.Fatalf("after c released: %v %v", live, err)
	}
	if _, err := s.Renew(ctx, "a", 0); err == nil {
		t.Error("a lease of 0 taken")
	}
}
