// Package report holds what the mttr harness measures and renders it: the
// JSON file (--json), the SVG chart of recovery times per cycle (--svg) and
// the tables printed on the terminal.
//
// Times are seconds. A time that was not measured (a fault the client
// never noticed, a device that never lost its connection) is null in the
// JSON, NaN in Go. A device that had not recovered when its cycle gave up
// waiting keeps the time waited as its recovery time, marked
// "recovered": false: the figure is then a lower bound, and so is any
// percentile it reaches.
package report

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"time"

	"github.com/thermofleet/thermo/mttr/stats"
)

// Clients whose recovery is measured.
const (
	// ClientOurs is a thermostat agent on package transport.
	ClientOurs = "ours"
	// ClientBaseline is the same agent on a plain paho.mqtt.golang client
	// with its default options.
	ClientBaseline = "baseline"
)

// Seconds is a time in seconds: a JSON number rounded to 0.1 ms, or null
// for NaN (not measured).
type Seconds float64

// NaN is the Seconds of something not measured.
var NaN = Seconds(math.NaN())

// Dur converts a duration.
func Dur(d time.Duration) Seconds { return Seconds(d.Seconds()) }

// Valid reports whether s was measured.
func (s Seconds) Valid() bool { return !math.IsNaN(float64(s)) && !math.IsInf(float64(s), 0) }

// MarshalJSON writes a number rounded to 0.1 ms, or null.
func (s Seconds) MarshalJSON() ([]byte, error) {
	if !s.Valid() {
		return []byte("null"), nil
	}
	return json.Marshal(math.Round(float64(s)*1e4) / 1e4)
}

// UnmarshalJSON reads a number, or null as NaN.
func (s *Seconds) UnmarshalJSON(b []byte) error {
	if string(b) == "null" {
		*s = NaN
		return nil
	}
	var f float64
	if err := json.Unmarshal(b, &f); err != nil {
		return fmt.Errorf("seconds: %w", err)
	}
	*s = Seconds(f)
	return nil
}

// Number is a dimensionless figure (a ratio): a JSON number rounded to
// four significant digits, or null for NaN.
type Number float64

// MarshalJSON writes a number or null.
func (n Number) MarshalJSON() ([]byte, error) {
	f := float64(n)
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return []byte("null"), nil
	}
	if f != 0 {
		scale := math.Pow(10, 3-math.Floor(math.Log10(math.Abs(f))))
		f = math.Round(f*scale) / scale
	}
	return json.Marshal(f)
}

// UnmarshalJSON reads a number, or null as NaN.
func (n *Number) UnmarshalJSON(b []byte) error {
	var s Seconds
	if err := s.UnmarshalJSON(b); err != nil {
		return err
	}
	*n = Number(s)
	return nil
}

// Sample is one device's measurements in one cycle.
type Sample struct {
	Device string `json:"device"`
	Client string `json:"client"`
	// DetectS: from the fault to the client noticing it lost the broker.
	DetectS Seconds `json:"detect_s"`
	// ReconnectS: from the broker accepting connections again to the
	// client connected and subscribed.
	ReconnectS Seconds `json:"reconnect_s"`
	// ResyncS: from the broker accepting connections again to the
	// controller holding every local change the device made in the
	// outage. This is the recovery time the MTTR figures are made of.
	ResyncS Seconds `json:"resync_s"`
	// Recovered is false when the cycle gave up waiting: ResyncS is then
	// the time waited, a lower bound.
	Recovered bool `json:"recovered"`
	// LocalChanges made on the device during the outage.
	LocalChanges int `json:"local_changes"`
	// LostEvents: local changes the controller did not hold when the
	// cycle ended although the device was connected again (it sends its
	// whole state on every connect, so they were lost).
	LostEvents int `json:"lost_events"`
	// LateEvents: local changes not at the controller yet because the
	// device had not reconnected when the cycle stopped waiting; its
	// conflicts are then undecided, and not counted as wrong winners.
	LateEvents int `json:"late_events,omitempty"`
	// Conflicts: concurrent writes of one property by the device and
	// the controller in this cycle; WrongWinners: those the device's
	// value did not win on both sides.
	Conflicts    int `json:"conflicts"`
	WrongWinners int `json:"wrong_winners"`
	// Diverged: device and controller still disagreed on a value or a
	// stamp when the cycle ended.
	Diverged bool `json:"diverged"`
	// Note says what went wrong, when something did.
	Note string `json:"note,omitempty"`
}

// Failover is how a cluster (several broker nodes, several controller
// instances, one PostgreSQL) rode out the fault of one of its parts,
// measured from the fault. Figures that do not apply to the fault are
// null.
type Failover struct {
	// Part is what was faulted: "instance b", "node n2", "postgres",
	// "instance b from postgres".
	Part string `json:"part"`
	// TakeoverS: from the fault to the other live instances acting for
	// every device (kill-instance, partition-postgres).
	TakeoverS Seconds `json:"takeover_s"`
	// StoppedS: from the cut to the instance cut from PostgreSQL no
	// longer acting (partition-postgres); LeaseEndS: to its lease's end
	// as it last renewed it. Two owners never act at once when it stops
	// before the others take over.
	StoppedS  Seconds `json:"stopped_s"`
	LeaseEndS Seconds `json:"lease_end_s"`
	// TwoOwners: another instance acted for one of its devices before it
	// stopped.
	TwoOwners bool `json:"two_owners"`
	// Moved devices lost their broker node and connected to another
	// (kill-node), FailoverP50S and FailoverMaxS after the fault.
	Moved        int     `json:"moved"`
	FailoverP50S Seconds `json:"failover_p50_s"`
	FailoverMaxS Seconds `json:"failover_max_s"`
	// WritesRetried: remote writes that an instance refused (or could
	// not be reached for) during the fault and that were retried.
	WritesRetried int `json:"writes_retried"`
}

// Link is the controller's own broker connection in a cycle, when it has
// one (not with the embedded broker, where it is in-process).
type Link struct {
	DetectS    Seconds `json:"detect_s"`
	ReconnectS Seconds `json:"reconnect_s"`
}

// Cycle is one fault and the recovery from it.
type Cycle struct {
	N     int    `json:"cycle"`
	Fault string `json:"fault"`
	// FaultAt is when the fault was injected; UpAt when the broker
	// accepted connections again (kill), was continued (hang) or the
	// network healed (partition).
	FaultAt time.Time `json:"fault_at"`
	UpAt    time.Time `json:"up_at"`
	DownS   Seconds   `json:"down_s"`
	// Controller is the controller's link, when it has its own.
	Controller *Link `json:"controller,omitempty"`
	// Failover is what a fault of one part of a cluster measured (the
	// cluster's fault modes).
	Failover *Failover `json:"failover,omitempty"`
	Ours     Summary   `json:"ours"`
	Baseline *Summary  `json:"baseline,omitempty"`
	Samples  []Sample  `json:"devices"`
}

// Summary condenses samples. The first six fields are the figures the
// issue asks for; MTTR is the resync time.
type Summary struct {
	MTTRMean     Seconds `json:"mttr_mean_s"`
	MTTRP50      Seconds `json:"mttr_p50_s"`
	MTTRP99      Seconds `json:"mttr_p99_s"`
	DetectP50    Seconds `json:"detect_p50_s"`
	LostEvents   int     `json:"lost_events"`
	WrongWinners int     `json:"wrong_winners"`

	MTTRMax      Seconds `json:"mttr_max_s"`
	DetectP99    Seconds `json:"detect_p99_s"`
	DetectMax    Seconds `json:"detect_max_s"`
	ReconnectP50 Seconds `json:"reconnect_p50_s"`
	ReconnectP99 Seconds `json:"reconnect_p99_s"`
	Samples      int     `json:"samples"`
	// Unrecovered samples entered the MTTR figures as lower bounds.
	Unrecovered int `json:"unrecovered"`
	// Undetected: samples where the client never noticed the fault.
	Undetected   int `json:"undetected"`
	LocalChanges int `json:"local_changes"`
	LateEvents   int `json:"late_events"`
	Conflicts    int `json:"conflicts"`
	Diverged     int `json:"diverged"`
}

// Summarize condenses the samples of one client.
func Summarize(samples []Sample, client string) Summary {
	var resync, detect, reconnect []float64
	var s Summary
	for _, x := range samples {
		if x.Client != client {
			continue
		}
		s.Samples++
		if x.ResyncS.Valid() {
			resync = append(resync, float64(x.ResyncS))
		}
		if !x.Recovered {
			s.Unrecovered++
		}
		if x.DetectS.Valid() {
			detect = append(detect, float64(x.DetectS))
		} else {
			s.Undetected++
		}
		if x.ReconnectS.Valid() {
			reconnect = append(reconnect, float64(x.ReconnectS))
		}
		s.LocalChanges += x.LocalChanges
		s.LostEvents += x.LostEvents
		s.LateEvents += x.LateEvents
		s.Conflicts += x.Conflicts
		s.WrongWinners += x.WrongWinners
		if x.Diverged {
			s.Diverged++
		}
	}
	r, d, c := stats.Summarize(resync), stats.Summarize(detect), stats.Summarize(reconnect)
	s.MTTRMean, s.MTTRP50, s.MTTRP99, s.MTTRMax = Seconds(r.Mean), Seconds(r.P50), Seconds(r.P99), Seconds(r.Max)
	s.DetectP50, s.DetectP99, s.DetectMax = Seconds(d.P50), Seconds(d.P99), Seconds(d.Max)
	s.ReconnectP50, s.ReconnectP99 = Seconds(c.P50), Seconds(c.P99)
	return s
}

// Ratios compare our figures with the baseline's: ours ÷ baseline, so 0.05
// means we recover twenty times faster.
type Ratios struct {
	MTTRMean  Number `json:"mttr_mean"`
	MTTRP50   Number `json:"mttr_p50"`
	MTTRP99   Number `json:"mttr_p99"`
	DetectP50 Number `json:"detect_p50"`
	// AtMost is set when some baseline samples had not recovered: their
	// times are lower bounds, so the ratios are upper bounds.
	AtMost bool `json:"at_most"`
}

// Compare computes ours ÷ baseline.
func Compare(ours, base Summary) Ratios {
	return Ratios{
		MTTRMean:  Number(stats.Ratio(float64(ours.MTTRMean), float64(base.MTTRMean))),
		MTTRP50:   Number(stats.Ratio(float64(ours.MTTRP50), float64(base.MTTRP50))),
		MTTRP99:   Number(stats.Ratio(float64(ours.MTTRP99), float64(base.MTTRP99))),
		DetectP50: Number(stats.Ratio(float64(ours.DetectP50), float64(base.DetectP50))),
		AtMost:    base.Unrecovered > 0,
	}
}

// Plan is one fault mode of a run and how many cycles of it.
type Plan struct {
	Fault  string `json:"fault"`
	Cycles int    `json:"cycles"`
}

// Config is what the run was asked to do.
type Config struct {
	Broker            string  `json:"broker"`
	Faults            []Plan  `json:"faults"`
	KeepAliveS        Seconds `json:"keep_alive_s"`
	FactorOfKeepAlive float64 `json:"factor_of_keep_alive"`
	// DownS is how long a killed broker stays down: factor × keep-alive.
	DownS Seconds `json:"down_s"`
	// KeepDeadS is how long a hung broker or a partition lasts.
	KeepDeadS       Seconds `json:"keep_dead_s"`
	KeepRunningS    Seconds `json:"keep_running_s"`
	MaxRecoveryS    Seconds `json:"max_recovery_s"`
	Devices         int     `json:"devices"`
	BaselineDevices int     `json:"baseline_devices"`
	// BaselineClient describes the baseline's client and options.
	BaselineClient string `json:"baseline_client,omitempty"`
	// Nodes, Instances and LeaseS describe a cluster run: broker nodes,
	// controller instances and their lease.
	Nodes     int     `json:"nodes,omitempty"`
	Instances int     `json:"instances,omitempty"`
	LeaseS    Seconds `json:"lease_s,omitempty"`
	// ControllerProcess: the controller ran as a process of its own
	// (--controller-process), not in the harness.
	ControllerProcess bool `json:"controller_process,omitempty"`
}

// Target is one recovery target checked against the measurements.
type Target struct {
	Name string `json:"name"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
	// NotEvaluated says why a target the run could not show was not
	// checked (Met is then false, and --strict ignores it): the
	// controller measured inside the harness, too short a steady time.
	NotEvaluated string `json:"not_evaluated,omitempty"`
}

// Side is one client's figures over the whole run.
type Side struct {
	Summary Summary            `json:"summary"`
	ByFault map[string]Summary `json:"by_fault"`
}

// Result is a whole run: the JSON file's content.
type Result struct {
	Tool     string    `json:"tool"`
	Command  string    `json:"command"`
	Machine  string    `json:"machine"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	Config   Config    `json:"config"`
	// Summary is ours over every cycle; ByFault ours per fault mode.
	Summary  Summary            `json:"summary"`
	ByFault  map[string]Summary `json:"by_fault"`
	Baseline *Side              `json:"baseline,omitempty"`
	// Ratio is ours ÷ baseline over every cycle; RatioByFault per mode.
	Ratio        *Ratios           `json:"ratio_to_baseline,omitempty"`
	RatioByFault map[string]Ratios `json:"ratio_to_baseline_by_fault,omitempty"`
	Targets      []Target          `json:"targets"`
	// Skipped lists what could not run here, and why.
	Skipped []string `json:"skipped,omitempty"`
	// Resources is the processes' CPU and memory.
	Resources *Resources `json:"resources,omitempty"`
	Cycles    []Cycle    `json:"cycles"`
}

// Finish fills the summaries and ratios from the cycles.
func (r *Result) Finish() {
	var all []Sample
	byFault := map[string][]Sample{}
	for i := range r.Cycles {
		c := &r.Cycles[i]
		c.Ours = Summarize(c.Samples, ClientOurs)
		c.Baseline = nil
		if r.Config.BaselineDevices > 0 {
			b := Summarize(c.Samples, ClientBaseline)
			c.Baseline = &b
		}
		all = append(all, c.Samples...)
		byFault[c.Fault] = append(byFault[c.Fault], c.Samples...)
	}
	r.Summary = Summarize(all, ClientOurs)
	r.ByFault = map[string]Summary{}
	for f, s := range byFault {
		r.ByFault[f] = Summarize(s, ClientOurs)
	}
	if r.Config.BaselineDevices == 0 {
		r.Baseline, r.Ratio, r.RatioByFault = nil, nil, nil
		return
	}
	r.Baseline = &Side{Summary: Summarize(all, ClientBaseline), ByFault: map[string]Summary{}}
	ratio := Compare(r.Summary, r.Baseline.Summary)
	r.Ratio = &ratio
	r.RatioByFault = map[string]Ratios{}
	for f, s := range byFault {
		b := Summarize(s, ClientBaseline)
		r.Baseline.ByFault[f] = b
		r.RatioByFault[f] = Compare(r.ByFault[f], b)
	}
}

// Faults returns the fault modes of the cycles in the order they first ran.
func (r *Result) Faults() []string {
	var out []string
	for _, c := range r.Cycles {
		if !slices.Contains(out, c.Fault) {
			out = append(out, c.Fault)
		}
	}
	return out
}

// Failed reports whether any of our devices lost an event, let a wrong
// writer win, or ended a cycle out of sync with the controller.
func (r *Result) Failed() bool {
	return r.Summary.LostEvents > 0 || r.Summary.WrongWinners > 0 || r.Summary.Diverged > 0
}

// WriteJSON writes the result as indented JSON.
func (r *Result) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(r)
}
