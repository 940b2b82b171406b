package ota

import (
	"fmt"
	"testing"
)

// TestStagesNest: every device of a stage is in every larger one, the
// first stage is never empty, and 100% is everyone.
func TestStagesNest(t *testing.T) {
	for _, n := range []int{1, 3, 20, 500} {
		var ids []string
		for i := range n {
			ids = append(ids, fmt.Sprintf("dev-%d", i))
		}
		prev := map[string]bool{}
		for _, p := range []float64{0.5, 1, 10, 25, 50, 99.99, 100} {
			in := included(ids, p)
			if len(in) == 0 {
				t.Fatalf("%d devices at %v%%: nobody", n, p)
			}
			for id := range prev {
				if !in[id] {
					t.Fatalf("%d devices: %s in the stage before %v%% but not in it", n, id, p)
				}
			}
			prev = in
		}
		if len(prev) != n {
			t.Fatalf("%d devices at 100%%: %d", n, len(prev))
		}
		if n == 500 {
			if got := len(included(ids, 10)); got < 30 || got > 70 {
				t.Errorf("500 devices at 10%%: %d", got)
			}
		}
	}
	if len(included(nil, 50)) != 0 || len(included([]string{"a"}, 0)) != 0 {
		t.Error("nobody to include, or 0%: must be empty")
	}
}
