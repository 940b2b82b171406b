package lease

import (
	"fmt"
	"slices"
	"testing"
)

// TestOwner: rendezvous hashing spreads devices evenly over the live
// instances, and an instance leaving or joining moves only the devices it
// had or gains.
func TestOwner(t *testing.T) {
	ids := make([]string, 3000)
	for i := range ids {
		ids[i] = fmt.Sprintf("d%d", i)
	}
	tests := []struct {
		name         string
		before, now  []string
		moved, owner string // moved: the only instance whose devices may change hands
	}{
		{"one leaves", []string{"a", "b", "c"}, []string{"a", "c"}, "b", ""},
		{"one joins", []string{"a", "b"}, []string{"a", "b", "c"}, "c", ""},
		{"alone", []string{"a"}, []string{"a"}, "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			count := map[string]int{}
			for _, id := range ids {
				was, is := Owner(id, tc.before), Owner(id, tc.now)
				count[is]++
				if was != is && was != tc.moved && is != tc.moved {
					t.Fatalf("%s moved from %s to %s", id, was, is)
				}
				if !slices.Contains(tc.now, is) {
					t.Fatalf("%s owned by %q, not live", id, is)
				}
			}
			for _, n := range tc.now {
				share := float64(count[n]) / float64(len(ids))
				if want := 1 / float64(len(tc.now)); share < want*0.85 || share > want*1.15 {
					t.Errorf("%s owns %.1f%% of the devices, want about %.1f%%", n, 100*share, 100*want)
				}
			}
		})
	}
	if Owner("d1", nil) != "" {
		t.Error("an owner among no instances")
	}
}

// TestViewOwns: an inactive instance owns nothing.
func TestViewOwns(t *testing.T) {
	live := []string{"a", "b"}
	for _, id := range []string{"d1", "d2", "d3", "d4"} {
		o := Owner(id, live)
		if !(View{Self: o, Active: true, Live: live}).Owns(id) {
			t.Errorf("%s: its owner %s does not own it", id, o)
		}
		if (View{Self: o, Active: false, Live: live}).Owns(id) {
			t.Errorf("%s: owned by an inactive instance", id)
		}
	}
}
