package harness

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"time"

	"github.com/thermofleet/thermo/mttr/brokerctl"
	"github.com/thermofleet/thermo/mttr/procstat"
	"github.com/thermofleet/thermo/mttr/report"
	"github.com/thermofleet/thermo/protocol"
)

// resourceEvery is how often the processes' CPU and memory are read.
const resourceEvery = time.Second

// steadyWindowText says which part of a cycle the steady figures are of.
const steadyWindowText = "the last half of each cycle's keep-running period: from the broker's return + keep-running/2 " +
	"(or from the end of the cycle's recovery, if later) to the next fault (return + keep-running)"

// steadyWindow is one cycle's steady window.
type steadyWindow struct {
	n        int
	from, to time.Time
}

// startSampling starts reading the harness's own process; setup adds the
// broker's and the controller's as it starts them (watchProcess).
func (r *run) startSampling() {
	role := fmt.Sprintf("%d simulated devices", r.cfg.Devices+r.cfg.BaselineDevices)
	if r.controllerIn() == "harness" {
		role += " and the controller"
	}
	r.sampler = procstat.Start(resourceEvery, procstat.Target{Name: "harness", Role: role, PID: os.Getpid})
}

// watchProcess samples p (its current process: a restarted broker is
// followed) under name.
func (r *run) watchProcess(name, role string, p *brokerctl.Process) {
	if r.sampler != nil {
		r.sampler.Add(procstat.Target{Name: name, Role: role, PID: p.PID, Child: true})
	}
}

// controllerIn names the process the controller runs in (see
// report.Resources.ControllerIn).
func (r *run) controllerIn() string {
	switch {
	case r.cfg.Broker == BrokerAedesCluster:
		return ""
	case r.cfg.Broker == BrokerEmbedded:
		return "broker"
	case r.cfg.ControllerProcess:
		return "controller"
	}
	return "harness"
}

// brokerRole is what the broker process runs, for the resources table.
func brokerRole(broker string) string {
	switch broker {
	case BrokerEmbedded:
		return "controllerlite serve: embedded broker and controller"
	case BrokerAedes:
		return "aedes (node)"
	}
	return broker
}

// noteSteady records cycle n's steady window: from half the keep-running
// period after the broker's return, or from now (the recovery and its
// judging done) if later, to the next fault.
func (r *run) noteSteady(n int, tUp time.Time) {
	from, to := tUp.Add(r.cfg.KeepRunning/2), tUp.Add(r.cfg.KeepRunning)
	if now := time.Now(); now.After(from) {
		from = now
	}
	if from.After(to) {
		from = to
	}
	r.steady = append(r.steady, steadyWindow{n, from, to})
}

// returnWindow is one cycle's return: from the broker's return to the
// end of the recovery, and how many devices recovered in it.
type returnWindow struct {
	n        int
	from, to time.Time
	devices  int
}

// noteReturn records cycle n's return, from tUp to end.
func (r *run) noteReturn(n int, tUp, end time.Time, samples []report.Sample) {
	recovered := 0
	for _, s := range samples {
		if s.Recovered {
			recovered++
		}
	}
	r.returns = append(r.returns, returnWindow{n, tUp, end, recovered})
}

// forever is a window's end past any sample.
var forever = time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)

// resources stops the sampling and condenses it: every process over each
// cycle's steady window, over those windows together, and over the run.
func (r *run) resources() *report.Resources {
	targets, series := r.sampler.Stop()
	res := &report.Resources{IntervalS: report.Dur(resourceEvery), SteadyWindow: steadyWindowText, ControllerIn: r.controllerIn()}
	window := func(from, to time.Time) (report.Window, []procstat.Usage) {
		var w report.Window
		us := make([]procstat.Usage, len(targets))
		var span time.Duration
		for i, t := range targets {
			us[i] = series[i].Window(from, to)
			span = max(span, us[i].Span)
			w.Processes = append(w.Processes, usage(t, us[i]))
		}
		w.SpanS = report.Dur(span)
		return w, us
	}
	res.Run, _ = window(time.Time{}, forever)
	steady := make([]procstat.Usage, len(targets))
	for _, s := range r.steady {
		w, us := window(s.from, s.to)
		w.Cycle, w.From, w.To = s.n, s.from.UTC(), s.to.UTC()
		res.Cycles = append(res.Cycles, w)
		for i := range steady {
			steady[i] = steady[i].Add(us[i])
		}
	}
	var span time.Duration
	for i, t := range targets {
		span = max(span, steady[i].Span)
		res.Steady.Processes = append(res.Steady.Processes, usage(t, steady[i]))
	}
	res.Steady.SpanS = report.Dur(span)
	for _, rw := range r.returns {
		rt := report.Return{Cycle: rw.n, From: rw.from.UTC(), To: rw.to.UTC(), SpanS: report.Dur(rw.to.Sub(rw.from)),
			Devices: rw.devices, CPUs: runtime.NumCPU()}
		for i, t := range targets {
			rt.Processes = append(rt.Processes, report.NewReturnCost(t.Name, series[i].CPUBetween(rw.from, rw.to), rw.devices))
		}
		res.Returns = append(res.Returns, rt)
	}
	return res
}

// usage is u as the report has it.
func usage(t procstat.Target, u procstat.Usage) report.Usage {
	mb := func(b int64) report.Number {
		if u.Samples == 0 {
			return report.Number(report.NaN)
		}
		return report.Number(float64(b) / (1 << 20))
	}
	cpu := report.Number(100 * u.CPU)
	if u.Span == 0 {
		cpu = report.Number(report.NaN) // not measured
	}
	return report.Usage{Process: t.Name, Role: t.Role, Samples: u.Samples, CPUPct: cpu,
		RSSMeanMB: mb(u.RSSMean), RSSMaxMB: mb(u.RSSMax), RSSAnonMeanMB: mb(u.RSSAnonMean), RSSFileMeanMB: mb(u.RSSFileMean)}
}

// startControllerProcess runs the controller as a process of its own
// (--controller-process) on the broker at r.brokerURL: `serve --broker`
// of the EmbeddedCmd, with the PKI's controller certificate, as the
// cluster runs its instances. It is not faulted; it reconnects by itself.
// The harness reaches it through its HTTP API.
func (r *run) startControllerProcess(ctx context.Context) (*brokerctl.Process, controller, error) {
	cert, key, err := r.pki.client(protocol.ControllerID)
	if err != nil {
		return nil, nil, err
	}
	hport, err := brokerctl.FreePort("127.0.0.1")
	if err != nil {
		return nil, nil, err
	}
	httpAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(hport))
	dir := filepath.Join(r.cfg.WorkDir, "controller")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, err
	}
	args := append(slices.Clone(r.cfg.EmbeddedCmd), "--broker", r.brokerURL, "--ca", r.pki.caFile, "--cert", cert, "--key", key,
		"--data-dir", filepath.Join(dir, "data"), "--http", httpAddr, "--http-token-file", r.pki.tokenFile,
		"--keep-alive", r.cfg.KeepAlive.String())
	p := &brokerctl.Process{Kind: "controller", Argv: args, Address: httpAddr, LogFile: filepath.Join(dir, "controllerlite.log")}
	r.out.status("starting the controller process")
	if _, err := startPart(ctx, p); err != nil {
		return nil, nil, err
	}
	c, err := newRemoteController(httpAddr, r.pki.token)
	if err != nil {
		p.Stop()
		return nil, nil, err
	}
	return p, c, nil
}
