package harness

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/thermofleet/thermo/protocol"
)

// write is one stamped write of a set of properties, made on the device
// (a local change) or at the controller (a remote user's change).
type write struct {
	Props map[string]any
	W     protocol.Clock
}

// verdict is what one device's cycle came to.
type verdict struct {
	LocalChanges int
	Lost         int // local changes the controller does not hold
	Conflicts    int // controller writes concurrent with a local write of the same property
	Wrong        int // conflicts the device's value did not win on both sides
	Diverged     bool
	Notes        []string
}

// covered reports whether the controller holds local write w: for every
// property of w, the controller's stamp is w's or a later one.
func covered(w write, ctrl protocol.Props) bool {
	for p := range w.Props {
		c, ok := ctrl[p]
		if !ok || !w.W.LessEq(c.W) {
			return false
		}
	}
	return true
}

// resynced reports whether the controller holds every local write.
func resynced(local []write, ctrl protocol.Props) bool {
	for _, w := range local {
		if !covered(w, ctrl) {
			return false
		}
	}
	return true
}

// judge applies the protocol's rules to a cycle's writes and the final
// state of both sides (PROTOCOL.md: a concurrent write of the device wins;
// a write that dominates replaces):
//   - a local change is lost when the controller does not hold it;
//   - a controller write concurrent with a local write of the same
//     property is a conflict, won wrongly when its stamp stands on either
//     side at the end;
//   - a controller write that dominates every local write of a property
//     must stand on both sides;
//   - both sides must end with the same values and stamps.
func judge(local, ctrlWrites []write, dev, ctrl protocol.Props) verdict {
	v := verdict{LocalChanges: len(local)}
	for _, w := range local {
		if !covered(w, ctrl) {
			v.Lost++
			v.Notes = append(v.Notes, fmt.Sprintf("local change %v at %v not at the controller", w.Props, w.W))
		}
	}
	for _, cw := range ctrlWrites {
		for _, p := range slices.Sorted(maps.Keys(cw.Props)) {
			concurrent, dominates := false, true
			for _, lw := range local {
				if _, ok := lw.Props[p]; !ok {
					continue
				}
				switch cw.W.Compare(lw.W) {
				case protocol.Concurrent:
					concurrent = true
				case protocol.Before, protocol.Equal:
					dominates = false
				}
			}
			switch {
			case concurrent:
				v.Conflicts++
				if dev[p].W == cw.W || ctrl[p].W == cw.W {
					v.Wrong++
					v.Notes = append(v.Notes, fmt.Sprintf("%s: the controller's concurrent write %v=%v at %v won (device %v at %v, controller %v at %v)",
						p, p, cw.Props[p], cw.W, dev[p].Val, dev[p].W, ctrl[p].Val, ctrl[p].W))
				}
			case dominates:
				// The controller wrote after hearing every local
				// change: its value must stand, unless something
				// later replaced it on both sides.
				if !cw.W.LessEq(dev[p].W) || !cw.W.LessEq(ctrl[p].W) {
					v.Notes = append(v.Notes, fmt.Sprintf("%s: the controller's later write at %v did not reach the device (device at %v)", p, cw.W, dev[p].W))
					v.Diverged = true
				}
			}
		}
	}
	if d := difference(dev, ctrl); d != "" {
		v.Diverged = true
		v.Notes = append(v.Notes, "out of sync: "+d)
	}
	return v
}

// difference describes how two property sets differ, "" if they do not.
func difference(dev, ctrl protocol.Props) string {
	var diffs []string
	names := slices.Sorted(maps.Keys(dev))
	for n := range ctrl {
		if _, ok := dev[n]; !ok {
			names = append(names, n)
		}
	}
	for _, n := range names {
		d, c := dev[n], ctrl[n]
		if d.W != c.W || fmt.Sprint(d.Val) != fmt.Sprint(c.Val) {
			diffs = append(diffs, fmt.Sprintf("%s device %v at %v, controller %v at %v", n, d.Val, d.W, c.Val, c.W))
		}
	}
	return strings.Join(diffs, "; ")
}
