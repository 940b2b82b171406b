package report

import (
	"fmt"
	"io"
	"math"
	"strings"
	"text/tabwriter"
)

// FormatSeconds renders a time for people: "0.352 s", "12.4 s", "—" when
// not measured.
func FormatSeconds(s Seconds) string {
	if !s.Valid() {
		return "—"
	}
	f := float64(s)
	switch {
	case math.Abs(f) < 10:
		return fmt.Sprintf("%.3f s", f)
	case math.Abs(f) < 100:
		return fmt.Sprintf("%.1f s", f)
	default:
		return fmt.Sprintf("%.0f s", f)
	}
}

// formatRatio renders ours ÷ baseline with how many times faster that is.
func formatRatio(n Number, atMost bool) string {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "—"
	}
	bound := ""
	if atMost {
		bound = "≤ "
	}
	if f > 0 && f < 1 {
		gt := ""
		if atMost {
			gt = "≥ "
		}
		return fmt.Sprintf("%s%.3g (%s%.3g× faster)", bound, f, gt, 1/f)
	}
	return fmt.Sprintf("%s%.3g", bound, f)
}

// CycleHeader is the header of the per-cycle table printed as cycles end.
func CycleHeader(baseline bool) string {
	h := fmt.Sprintf("%-5s %-18s %8s │ %-44s", "cycle", "fault", "down", "ours: detect p50 · reconnect p50 · resync p50/p99/max · lost · wrong")
	if baseline {
		h += " │ baseline: resync p50/max · unrecovered"
	}
	return h
}

// CycleLine is one row of the per-cycle table.
func CycleLine(c Cycle) string {
	o := c.Ours
	s := fmt.Sprintf("%-5d %-18s %8s │ %8s · %8s · %8s / %8s / %8s · %d · %d",
		c.N, c.Fault, FormatSeconds(c.DownS), FormatSeconds(o.DetectP50), FormatSeconds(o.ReconnectP50),
		FormatSeconds(o.MTTRP50), FormatSeconds(o.MTTRP99), FormatSeconds(o.MTTRMax), o.LostEvents, o.WrongWinners)
	if o.Diverged > 0 || o.Unrecovered > 0 {
		s += fmt.Sprintf(" (%d unrecovered, %d out of sync)", o.Unrecovered, o.Diverged)
	}
	if b := c.Baseline; b != nil {
		s += fmt.Sprintf(" │ %8s / %8s · %d", FormatSeconds(b.MTTRP50), FormatSeconds(b.MTTRMax), b.Unrecovered)
	}
	if fo := c.Failover; fo != nil {
		s += " │ " + fo.String()
	}
	return s
}

// String is the failover's figures in a line.
func (fo *Failover) String() string {
	parts := []string{fo.Part}
	if fo.StoppedS.Valid() {
		parts = append(parts, "stopped acting "+FormatSeconds(fo.StoppedS)+", lease end "+FormatSeconds(fo.LeaseEndS))
	}
	if fo.TakeoverS.Valid() {
		parts = append(parts, "taken over "+FormatSeconds(fo.TakeoverS))
	}
	if fo.TwoOwners {
		parts = append(parts, "TWO OWNERS")
	}
	if fo.Moved > 0 {
		parts = append(parts, fmt.Sprintf("%d moved, failover p50 %s max %s", fo.Moved, FormatSeconds(fo.FailoverP50S), FormatSeconds(fo.FailoverMaxS)))
	}
	if fo.WritesRetried > 0 {
		parts = append(parts, fmt.Sprintf("%d writes retried", fo.WritesRetried))
	}
	return strings.Join(parts, " · ")
}

// WriteSummary prints the run's summary: ours against the baseline per
// fault mode, then the targets.
func (r *Result) WriteSummary(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\nmttr: %s broker, %d devices", r.Config.Broker, r.Config.Devices)
	if r.Config.BaselineDevices > 0 {
		fmt.Fprintf(tw, " + %d baseline (%s)", r.Config.BaselineDevices, r.Config.BaselineClient)
	}
	fmt.Fprintf(tw, ", keep-alive %s\n", FormatSeconds(r.Config.KeepAliveS))
	for _, f := range r.Faults() {
		o := r.ByFault[f]
		fmt.Fprintf(tw, "\n%s (%d samples)\tours", f, o.Samples)
		var b Summary
		var ra Ratios
		base := r.Baseline != nil
		if base {
			b, ra = r.Baseline.ByFault[f], r.RatioByFault[f]
			fmt.Fprintf(tw, "\tbaseline\tours ÷ baseline")
		}
		fmt.Fprintln(tw)
		row := func(name, ours, theirs, ratio string) {
			fmt.Fprintf(tw, "  %s\t%s", name, ours)
			if base {
				fmt.Fprintf(tw, "\t%s\t%s", theirs, ratio)
			}
			fmt.Fprintln(tw)
		}
		row("resync (MTTR) mean", FormatSeconds(o.MTTRMean), FormatSeconds(b.MTTRMean), formatRatio(ra.MTTRMean, ra.AtMost))
		row("resync (MTTR) p50", FormatSeconds(o.MTTRP50), FormatSeconds(b.MTTRP50), formatRatio(ra.MTTRP50, ra.AtMost))
		row("resync (MTTR) p99", FormatSeconds(o.MTTRP99), FormatSeconds(b.MTTRP99), formatRatio(ra.MTTRP99, ra.AtMost))
		row("resync max", FormatSeconds(o.MTTRMax), FormatSeconds(b.MTTRMax), "")
		row("detect p50", FormatSeconds(o.DetectP50), FormatSeconds(b.DetectP50), formatRatio(ra.DetectP50, false))
		row("detect max", FormatSeconds(o.DetectMax), FormatSeconds(b.DetectMax), "")
		row("reconnect p50", FormatSeconds(o.ReconnectP50), FormatSeconds(b.ReconnectP50), "")
		row("reconnect p99", FormatSeconds(o.ReconnectP99), FormatSeconds(b.ReconnectP99), "")
		row("unrecovered in cycle", fmt.Sprint(o.Unrecovered), fmt.Sprint(b.Unrecovered), "")
		row("undetected", fmt.Sprint(o.Undetected), fmt.Sprint(b.Undetected), "")
		row("lost events", fmt.Sprintf("%d / %d", o.LostEvents, o.LocalChanges), fmt.Sprintf("%d / %d", b.LostEvents, b.LocalChanges), "")
		row("late (device still offline)", fmt.Sprint(o.LateEvents), fmt.Sprint(b.LateEvents), "")
		row("wrong winners", fmt.Sprintf("%d / %d", o.WrongWinners, o.Conflicts), fmt.Sprintf("%d / %d", b.WrongWinners, b.Conflicts), "")
		row("out of sync at cycle end", fmt.Sprint(o.Diverged), fmt.Sprint(b.Diverged), "")
		for _, c := range r.Cycles {
			if c.Fault == f && c.Failover != nil {
				fmt.Fprintf(tw, "  cycle %d\t%s\n", c.N, c.Failover)
			}
		}
	}
	if r.Resources != nil {
		r.Resources.write(tw)
	}
	if len(r.Targets) > 0 {
		fmt.Fprintln(tw, "\ntargets\twant\tgot\t")
		for _, t := range r.Targets {
			met := "MET"
			switch {
			case t.NotEvaluated != "":
				met = "not evaluated: " + t.NotEvaluated
			case !t.Met:
				met = "MISSED"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", t.Name, t.Want, t.Got, met)
		}
	}
	for _, s := range r.Skipped {
		fmt.Fprintf(tw, "\nskipped: %s\n", strings.TrimSpace(s))
	}
	return tw.Flush()
}
