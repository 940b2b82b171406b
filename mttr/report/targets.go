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

// The recovery targets of issue 15 for a fleet on one small server, which
// replace the kill targets above for runs of at least that many devices:
// from 1,000 devices a resync p50 ≤ 1 s and p99 ≤ 3 s; from 10,000 every
// device within 15 s and the p50 ≤ 5 s.
const (
	TargetFleetDevices    = 1000
	TargetFleetP50        = time.Second
	TargetFleetP99        = 3 * time.Second
	TargetBigFleetDevices = 10000
	TargetBigFleetP50     = 5 * time.Second
	TargetBigFleetMax     = 15 * time.Second
)

// killTargets are the resync targets of a kill cycle for a fleet of n
// devices: the p50's bound, and the tail's ("p99", or "max": every
// device) bound and figure.
func killTargets(n int, s Summary) (p50 time.Duration, tailName string, tail time.Duration, tailGot Seconds) {
	switch {
	case n >= TargetBigFleetDevices:
		return TargetBigFleetP50, "max", TargetBigFleetMax, s.MTTRMax
	case n >= TargetFleetDevices:
		return TargetFleetP50, "p99", TargetFleetP99, s.MTTRP99
	}
	return TargetKillP50, "p99", TargetKillP99, s.MTTRP99
}

// CheckTargets evaluates the recovery targets against the finished
// result (call Finish first): for kill cycles the resync p50 and p99, for
// hang cycles every detection within 1.5 × keep-alive (a hang long enough
// to be noticed must be noticed by every device), and for every mode no
// lost event, no wrong winner and no device left out of sync; and the
// steady-state CPU and memory targets (resourceTargets).
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
			p50, tailName, tail, tailGot := killTargets(r.Config.Devices, s)
			ts = append(ts,
				Target{Name: "kill: resync p50", Want: "≤ " + FormatSeconds(Dur(p50)),
					Got: FormatSeconds(s.MTTRP50) + " over " + n, Met: s.MTTRP50.Valid() && s.Unrecovered == 0 && float64(s.MTTRP50) <= p50.Seconds()},
				Target{Name: "kill: resync " + tailName, Want: "≤ " + FormatSeconds(Dur(tail)),
					Got: FormatSeconds(tailGot) + " over " + n, Met: tailGot.Valid() && s.Unrecovered == 0 && float64(tailGot) <= tail.Seconds()})
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
		ts = append(ts, r.clusterTargets(f, keepAlive, n)...)
		ts = append(ts,
			Target{Name: f + ": lost events", Want: "0", Got: fmt.Sprintf("%d of %d local changes, over %s", s.LostEvents, s.LocalChanges, n), Met: s.LostEvents == 0},
			Target{Name: f + ": wrong winners", Want: "0", Got: fmt.Sprintf("%d of %d conflicts, over %s", s.WrongWinners, s.Conflicts, n), Met: s.WrongWinners == 0},
			Target{Name: f + ": out of sync at cycle end", Want: "0", Got: fmt.Sprintf("%d, over %s", s.Diverged, n), Met: s.Diverged == 0},
		)
	}
	return append(ts, r.resourceTargets()...)
}

// clusterTargets are the targets of the cluster's fault modes: the other
// instances take a stopped instance's devices within two leases; one cut
// from PostgreSQL stops acting before they do; a device whose broker node
// died is connected to another within the keep-alive.
func (r *Result) clusterTargets(fault string, keepAlive time.Duration, n string) []Target {
	var fos []*Failover
	for _, c := range r.Cycles {
		if c.Fault == fault && c.Failover != nil {
			fos = append(fos, c.Failover)
		}
	}
	if len(fos) == 0 {
		return nil
	}
	worst := func(get func(*Failover) Seconds) (Seconds, bool) {
		w, ok := Seconds(0), true
		for _, fo := range fos {
			v := get(fo)
			if !v.Valid() {
				ok = false
				continue
			}
			w = max(w, v)
		}
		return w, ok
	}
	var ts []Target
	if fault == "kill-instance" || fault == "partition-postgres" {
		limit := 2 * r.Config.LeaseS
		w, ok := worst(func(fo *Failover) Seconds { return fo.TakeoverS })
		got := "max " + FormatSeconds(w) + " over " + n
		if !ok {
			got += " (a takeover never completed)"
		}
		ts = append(ts, Target{Name: fault + ": takeover", Want: "≤ 2 leases = " + FormatSeconds(limit), Got: got, Met: ok && w <= limit})
	}
	if fault == "partition-postgres" {
		two := 0
		for _, fo := range fos {
			if fo.TwoOwners || !fo.StoppedS.Valid() || (fo.LeaseEndS.Valid() && fo.StoppedS >= fo.LeaseEndS) {
				two++
			}
		}
		ts = append(ts, Target{Name: fault + ": the cut instance stops before its lease ends and before the others take over", Want: "every cycle",
			Got: fmt.Sprintf("%d of %d cycles not", two, len(fos)), Met: two == 0})
	}
	if fault == "kill-node" {
		limit := Dur(keepAlive)
		w, ok := worst(func(fo *Failover) Seconds { return fo.FailoverMaxS })
		moved := 0
		for _, fo := range fos {
			moved += fo.Moved
		}
		ts = append(ts, Target{Name: fault + ": devices of the dead node connected to another", Want: "each within the keep-alive = " + FormatSeconds(limit),
			Got: fmt.Sprintf("max %s, %d devices moved, over %s", FormatSeconds(w), moved, n), Met: ok && moved > 0 && w <= limit})
	}
	return ts
}
