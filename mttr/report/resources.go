package report

import (
	"fmt"
	"io"
	"math"
	"strings"
	"time"
)

// Resources is the CPU and memory of the run's processes, sampled from
// /proc every second (package procstat): the harness's own process (the
// simulated devices, and the controller when it runs in the harness), the
// broker's (followed across its restarts), and the controller's when it
// runs as a process of its own (--controller-process). Each is condensed
// over the steady window of every cycle (SteadyWindow says which), over
// those windows together, and over the whole run.
type Resources struct {
	IntervalS Seconds `json:"sample_interval_s"`
	// SteadyWindow says exactly which part of each cycle is steady.
	SteadyWindow string `json:"steady_window"`
	// ControllerIn names the process the controller runs in:
	// "harness", "broker" (the embedded broker's), "controller" (its
	// own), or "" (the cluster's instances).
	ControllerIn string `json:"controller_in,omitempty"`
	// Steady is every cycle's steady window together: CPU over their
	// summed spans, RSS over all their samples. Run is the whole run,
	// from the start of the setup to the end of the last cycle.
	Steady Window   `json:"steady"`
	Run    Window   `json:"run"`
	Cycles []Window `json:"cycles"`
	// Returns are what each cycle's return cost (ReturnWindowText).
	Returns []Return `json:"returns,omitempty"`
}

// ReturnWindowText says which part of a cycle a Return is of.
const ReturnWindowText = "from the broker's return to the end of the cycle's recovery (every device resynced, or --max-recovery)"

// Return is the CPU each process used in one cycle's return, in all and
// per device that recovered in it: the cost of a returning device, the
// simulated devices' own (the harness) beside the broker's and the
// controller's.
type Return struct {
	Cycle int       `json:"cycle"`
	From  time.Time `json:"from"`
	To    time.Time `json:"to"`
	SpanS Seconds   `json:"span_s"`
	// Devices is how many devices recovered in the cycle; CPUs how many
	// the machine has (the CPU it had to give is SpanS × CPUs).
	Devices   int          `json:"devices"`
	CPUs      int          `json:"cpus"`
	Processes []ReturnCost `json:"processes"`
}

// ReturnCost is one process's CPU in a return. Its CPU time is counted
// in proportion where a sampling interval crosses the window's edges
// (procstat.Series.CPUBetween).
type ReturnCost struct {
	Process        string  `json:"process"`
	CPUS           Seconds `json:"cpu_s"`
	CPUMsPerDevice Number  `json:"cpu_ms_per_device"`
}

// Total is every process's CPU in the return.
func (rt Return) Total() Seconds {
	var sum Seconds
	for _, p := range rt.Processes {
		sum += p.CPUS
	}
	return sum
}

// Busy is the share of the machine's CPU (SpanS × CPUs) the processes
// used in the return, in %.
func (rt Return) Busy() Number {
	if rt.SpanS <= 0 || rt.CPUs <= 0 {
		return Number(NaN)
	}
	return Number(100 * float64(rt.Total()) / (float64(rt.SpanS) * float64(rt.CPUs)))
}

// perDevice is cpu in ms per device of n.
func perDevice(cpu Seconds, n int) Number {
	if n <= 0 {
		return Number(NaN)
	}
	return Number(1000 * float64(cpu) / float64(n))
}

// NewReturnCost is a process's cost in a return of n devices.
func NewReturnCost(process string, cpu time.Duration, n int) ReturnCost {
	return ReturnCost{Process: process, CPUS: Dur(cpu), CPUMsPerDevice: perDevice(Dur(cpu), n)}
}

// Window is the processes' use of CPU and memory over one window.
type Window struct {
	// Cycle is the cycle whose steady window this is (0 for the
	// summaries); From and To bound it.
	Cycle int       `json:"cycle,omitempty"`
	From  time.Time `json:"from,omitzero"`
	To    time.Time `json:"to,omitzero"`
	// SpanS is the time the CPU figures are measured over: from the
	// first sample in the window to the last (summed over the cycles
	// for the steady summary).
	SpanS     Seconds `json:"span_s"`
	Processes []Usage `json:"processes"`
}

// Usage is one process over a window. MB are 2^20 bytes.
type Usage struct {
	// Process is "harness", "broker", "controller" (or in a cluster
	// "node n1", "instance a", "redis"); Role what it runs.
	Process string `json:"process"`
	Role    string `json:"role"`
	Samples int    `json:"samples"`
	// CPUPct is the mean CPU use, user and system, every thread, in % of
	// one core (null with fewer than two samples).
	CPUPct Number `json:"cpu_pct_of_core"`
	// RSS (VmRSS) mean and max, and the mean of its anonymous (RssAnon)
	// and file-backed (RssFile) parts.
	RSSMeanMB     Number `json:"rss_mean_mb"`
	RSSMaxMB      Number `json:"rss_max_mb"`
	RSSAnonMeanMB Number `json:"rss_anon_mean_mb"`
	RSSFileMeanMB Number `json:"rss_file_mean_mb"`
}

// Usage returns the named process's figures in the window.
func (w Window) Usage(process string) (Usage, bool) {
	for _, u := range w.Processes {
		if u.Process == process {
			return u, true
		}
	}
	return Usage{}, false
}

// The steady-state targets of issue 15 ("ten thousand thermostats on one
// small server"), checked where a run has the fleet and the steady time
// to show them.
const (
	TargetSteadyCPUPct        = 25  // controller and broker, % of one core
	TargetSteadyRSSMB         = 400 // the embedded broker's process (controller and broker)
	TargetControllerRSSMB     = 200 // the controller alone, against Mosquitto
	TargetSteadyMinDevices    = 1000
	TargetSteadyMinSpan       = 10 * time.Second
	controllerInHarnessReason = "the controller runs in the harness's process, beside the simulated devices: not measured apart (run with --controller-process)"
)

// resourceTargets are the steady-state targets: controller and broker
// under a quarter of one core, the embedded broker's process under 400 MB,
// the controller against Mosquitto under 200 MB; over the steady windows,
// for runs of at least TargetSteadyMinDevices devices (the are
// 10,000) with at least TargetSteadyMinSpan of steady time.
func (r *Result) resourceTargets() []Target {
	res := r.Resources
	if res == nil || r.Config.Devices < TargetSteadyMinDevices || r.Config.Broker == "aedes-cluster" {
		return nil
	}
	st := res.Steady
	over := fmt.Sprintf("over %s steady, %d devices", FormatSeconds(st.SpanS), r.Config.Devices)
	cpuName, rssName := "steady: controller+broker CPU", "steady: controller+broker RSS"
	cpuWant := fmt.Sprintf("≤ %d %% of one core (mean)", TargetSteadyCPUPct)
	notEvaluated := func(name, want, why string) Target {
		return Target{Name: name, Want: want, Got: "—", NotEvaluated: why}
	}
	if !st.SpanS.Valid() || float64(st.SpanS) < TargetSteadyMinSpan.Seconds() {
		why := fmt.Sprintf("steady windows %s in all, want at least %s (a longer --keep-running)", FormatSeconds(st.SpanS), FormatSeconds(Dur(TargetSteadyMinSpan)))
		return []Target{notEvaluated(cpuName, cpuWant, why)}
	}
	broker, hasBroker := st.Usage("broker")
	switch res.ControllerIn {
	case "broker":
		rssWant := fmt.Sprintf("≤ %d MB (max)", TargetSteadyRSSMB)
		return []Target{
			{Name: cpuName, Want: cpuWant, Got: fmt.Sprintf("%s (the %s process) %s", formatPct(broker.CPUPct), r.Config.Broker, over),
				Met: hasBroker && valid(broker.CPUPct) && float64(broker.CPUPct) <= TargetSteadyCPUPct},
			{Name: rssName, Want: rssWant, Got: fmt.Sprintf("max %s, mean %s %s", formatMB(broker.RSSMaxMB), formatMB(broker.RSSMeanMB), over),
				Met: hasBroker && valid(broker.RSSMaxMB) && float64(broker.RSSMaxMB) <= TargetSteadyRSSMB},
		}
	case "controller":
		ctrl, _ := st.Usage("controller")
		var ts []Target
		if !hasBroker {
			ts = append(ts, notEvaluated(cpuName, cpuWant, fmt.Sprintf("the %s broker's process is not the harness's to sample", r.Config.Broker)))
		} else {
			sum := Number(float64(ctrl.CPUPct) + float64(broker.CPUPct))
			ts = append(ts, Target{Name: cpuName, Want: cpuWant,
				Got: fmt.Sprintf("%s (controller %s + %s %s) %s", formatPct(sum), formatPct(ctrl.CPUPct), r.Config.Broker, formatPct(broker.CPUPct), over),
				Met: valid(sum) && float64(sum) <= TargetSteadyCPUPct})
		}
		if r.Config.Broker == "mosquitto" {
			ts = append(ts, Target{Name: "steady: controller RSS", Want: fmt.Sprintf("≤ %d MB (max)", TargetControllerRSSMB),
				Got: fmt.Sprintf("max %s, mean %s (Mosquitto's max %s) %s", formatMB(ctrl.RSSMaxMB), formatMB(ctrl.RSSMeanMB), formatMB(broker.RSSMaxMB), over),
				Met: valid(ctrl.RSSMaxMB) && float64(ctrl.RSSMaxMB) <= TargetControllerRSSMB})
		}
		return ts
	default:
		return []Target{notEvaluated(cpuName, cpuWant, controllerInHarnessReason)}
	}
}

func valid(n Number) bool { return !math.IsNaN(float64(n)) && !math.IsInf(float64(n), 0) }

// formatPct renders a share of one core: "12.3 %".
func formatPct(n Number) string {
	if !valid(n) {
		return "—"
	}
	return fmt.Sprintf("%.1f %%", float64(n))
}

// formatMB renders a size: "266 MB", "1,118 MB".
func formatMB(n Number) string {
	if !valid(n) {
		return "—"
	}
	s := fmt.Sprintf("%.0f", float64(n))
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s + " MB"
}

// writeResources prints the table of the processes' CPU and memory.
func (res *Resources) write(w io.Writer) {
	fmt.Fprintf(w, "\nresources (from /proc every %s; steady: %s)\n", FormatSeconds(res.IntervalS), res.SteadyWindow)
	fmt.Fprintf(w, "  process\trole\tsteady CPU\tsteady RSS mean / max\trun CPU\trun RSS mean / max\t\n")
	for _, u := range res.Run.Processes {
		s, _ := res.Steady.Usage(u.Process)
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s / %s\t%s\t%s / %s\t\n", u.Process, u.Role,
			formatPct(s.CPUPct), formatMB(s.RSSMeanMB), formatMB(s.RSSMaxMB),
			formatPct(u.CPUPct), formatMB(u.RSSMeanMB), formatMB(u.RSSMaxMB))
	}
	fmt.Fprintf(w, "  (CPU in %% of one core; steady over %s, the run over %s)\n", FormatSeconds(res.Steady.SpanS), FormatSeconds(res.Run.SpanS))
	if res.ControllerIn == "harness" {
		fmt.Fprintf(w, "  %s\n", strings.TrimSpace(controllerInHarnessReason))
	}
	if len(res.Returns) == 0 {
		return
	}
	fmt.Fprintf(w, "\nreturn cost (CPU %s; per device recovered)\n", ReturnWindowText)
	fmt.Fprintf(w, "  cycle\tspan\tdevices")
	for _, p := range res.Returns[0].Processes {
		fmt.Fprintf(w, "\t%s", p.Process)
	}
	fmt.Fprintf(w, "\tall\tof the machine\t\n")
	for _, rt := range res.Returns {
		fmt.Fprintf(w, "  %d\t%s\t%d", rt.Cycle, FormatSeconds(rt.SpanS), rt.Devices)
		for _, p := range rt.Processes {
			fmt.Fprintf(w, "\t%s (%s)", FormatSeconds(p.CPUS), formatMs(p.CPUMsPerDevice))
		}
		all := rt.Total()
		fmt.Fprintf(w, "\t%s (%s)\t%s of %d CPUs\t\n", FormatSeconds(all), formatMs(perDevice(all, rt.Devices)), formatPct(rt.Busy()), rt.CPUs)
	}
}

// formatMs renders a cost per device: "1.57 ms".
func formatMs(n Number) string {
	if !valid(n) {
		return "—"
	}
	return fmt.Sprintf("%.2f ms", float64(n))
}
