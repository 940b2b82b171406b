package report

import (
	"fmt"
	"time"
)

// The recovery targets of the issue.
const (
	TargetKillP50   = 500 * time.Millisecond
	TargetKillP99   = 2 * time.Second
	TargetHangRatio = 1.5 // detection within 1.5 × keep-alive
)

// CheckTargets evaluates the recovery targets against the finished
// result (call Finish first): for kill cycles the resync p50 and p99, for
// hang cycles every detection within 1.5 × keep-alive (a hang long enough
// to be noticed must be noticed by every device), and for every mode no
// lost event, no wrong winner and no device left out of sync.
func (r *Result) CheckTargets(keepAlive, keepDead time.Duration) []Target {
	var ts []Target
	cycles := map[string]int{}
	for _, c := range r.Cycles {
		cycles[c.Fault]++
	}
	for _, f := range r.Faults() {
		s := r.ByFault[f]
		n := fmt.Sprintf("%d cycles × %d devices", cycles[f], r.Config.Devices)
		switch f {
		case "kill":
			ts = append(ts,
				Target{Name: "kill: resync p50", Want: "≤ " + FormatSeconds(Dur(TargetKillP50)),
					Got: FormatSeconds(s.MTTRP50) + " over " + n, Met: s.MTTRP50.Valid() && s.Unrecovered == 0 && float64(s.MTTRP50) <= TargetKillP50.Seconds()},
				Target{Name: "kill: resync p99", Want: "≤ " + FormatSeconds(Dur(TargetKillP99)),
					Got: FormatSeconds(s.MTTRP99) + " over " + n, Met: s.MTTRP99.Valid() && s.Unrecovered == 0 && float64(s.MTTRP99) <= TargetKillP99.Seconds()})
		case "hang":
			limitDur := time.Duration(TargetHangRatio * float64(keepAlive))
			limit := Dur(limitDur)
			want := fmt.Sprintf("every detection ≤ 1.5 × keep-alive = %s", FormatSeconds(limit))
			got := fmt.Sprintf("max %s, p50 %s, %d undetected, over %s", FormatSeconds(s.DetectMax), FormatSeconds(s.DetectP50), s.Undetected, n)
			met := s.DetectMax.Valid() && s.DetectMax <= limit
			if keepDead >= limitDur {
				// Hung for longer than the limit: every device must
				// have noticed.
				met = met && s.Undetected == 0
			}
			ts = append(ts, Target{Name: "hang: detection", Want: want, Got: got, Met: met})
		}
		ts = append(ts,
			Target{Name: f + ": lost events", Want: "0", Got: fmt.Sprintf("%d of %d local changes, over %s", s.LostEvents, s.LocalChanges, n), Met: s.LostEvents == 0},
			Target{Name: f + ": wrong winners", Want: "0", Got: fmt.Sprintf("%d of %d conflicts, over %s", s.WrongWinners, s.Conflicts, n), Met: s.WrongWinners == 0},
			Target{Name: f + ": out of sync at cycle end", Want: "0", Got: fmt.Sprintf("%d, over %s", s.Diverged, n), Met: s.Diverged == 0},
		)
	}
	return ts
}
