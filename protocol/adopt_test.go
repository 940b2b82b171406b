package protocol

import (
	"testing"
)

// TestRebase: two controller instances count on from one stored record
// (the owner receives a device's Event and has not stored it; another
// instance writes the setpoint from the stored record). Receiving the
// other's stored record by the clock rules loses its write (same clock,
// taken for a duplicate); rebasing keeps both, and a pending greeting.
func TestRebase(t *testing.T) {
	dev := NewReplica(DeviceSide)
	first, err := dev.WriteAndSend(map[string]any{PropMode: ModeHeat}, SrcLocal)
	if err != nil {
		t.Fatal(err)
	}
	base := NewController(nil)
	base.Ready()
	if _, _, err := base.ReceiveEvent("d1", first); err != nil {
		t.Fatal(err)
	}
	stored := base.Replica("d1") // what both instances read

	second, err := dev.WriteAndSend(map[string]any{PropMode: ModeCool}, SrcLocal)
	if err != nil {
		t.Fatal(err)
	}
	other := NewController(map[string]*Replica{"d1": stored.Clone()})
	other.Ready()
	write, err := other.Set("d1", map[string]any{PropSetpoint: 21.5})
	if err != nil {
		t.Fatal(err)
	}
	otherStored := other.Replica("d1")

	cases := []struct {
		name      string
		since     *Message
		wantMode  string
		wantOwnVC uint64 // at least
		wantDev   uint64 // at least
	}{
		{"an event taken since the last store", &second, ModeCool, write.VC[0] + 1, second.VC[1]},
		{"nothing taken since", nil, ModeHeat, write.VC[0], first.VC[1]},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			owner := NewController(map[string]*Replica{"d1": stored.Clone()})
			if tc.since != nil {
				if _, _, err := owner.ReceiveEvent("d1", *tc.since); err != nil {
					t.Fatal(err)
				}
				if owner.Replica("d1").VC[0] != write.VC[0] {
					t.Fatalf("owner at %v and the other's write at %v: not the collision this test is about", owner.Replica("d1").VC, write.VC)
				}
				// The clock rules alone take the other's write for a duplicate.
				naive := NewController(map[string]*Replica{"d1": owner.Replica("d1")})
				if out, err := naive.ReceiveCommand("d1", Message{V: Version, VC: otherStored.VC, Props: otherStored.Props}); err != nil || !out.Duplicate {
					t.Fatalf("receiving the stored record: %+v, %v; want a duplicate (the bug Rebase exists for)", out, err)
				}
			}
			if g := owner.Online("d1"); g != nil {
				t.Fatalf("greeting before ready: %+v", g)
			}
			if _, err := owner.Rebase("d1", otherStored, tc.since); err != nil {
				t.Fatal(err)
			}
			r := owner.Replica("d1")
			if sp := r.Props[PropSetpoint]; sp.Val != 21.5 || sp.W != write.VC {
				t.Errorf("setpoint %+v, want the other's 21.5 stamped %v", sp, write.VC)
			}
			if m := r.Props[PropMode]; m.Val != tc.wantMode {
				t.Errorf("mode %v, want %s", m.Val, tc.wantMode)
			}
			if r.VC[0] < tc.wantOwnVC || r.VC[1] < tc.wantDev {
				t.Errorf("clock %v, want at least [%d,%d]", r.VC, tc.wantOwnVC, tc.wantDev)
			}
			greet := owner.Ready()
			g, ok := greet["d1"]
			if !ok {
				t.Fatal("the greeting pending before the rebase was lost")
			}
			if !write.VC.LessEq(g.VC) || g.VC == write.VC {
				t.Errorf("greeting %v does not come after the other's write %v", g.VC, write.VC)
			}
		})
	}
}
