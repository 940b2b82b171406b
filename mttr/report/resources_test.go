package report

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// steadyRun is run() with resources: the steady windows span spanS in all,
// with the given processes.
func steadyRun(broker string, devices int, controllerIn string, spanS Seconds, procs ...Usage) *Result {
	r := run()
	r.Config.Broker, r.Config.Devices, r.Config.ControllerProcess = broker, devices, controllerIn == "controller"
	r.Resources = &Resources{IntervalS: 1, SteadyWindow: "the last half", ControllerIn: controllerIn,
		Steady: Window{SpanS: spanS, Processes: procs}, Run: Window{SpanS: 2 * spanS, Processes: procs}}
	return r
}

func use(process string, cpuPct, rssMean, rssMax float64) Usage {
	return Usage{Process: process, Role: process + "'s role", Samples: 50, CPUPct: Number(cpuPct), RSSMeanMB: Number(rssMean), RSSMaxMB: Number(rssMax)}
}

// TestResourceTargets: the steady-state targets of issue 15, evaluated
// only where the run can show them, and said not evaluated (not invented)
// where the controller shares the harness's process.
func TestResourceTargets(t *testing.T) {
	harness := use("harness", 40, 1900, 1950)
	cases := []struct {
		name string
		r    *Result
		// want: target name → "MET", "MISSED" or "not evaluated"; the
		// steady targets absent from it must be absent.
		want map[string]string
		got  string // in some Got
	}{
		{"embedded within both", steadyRun("embedded", 10000, "broker", 49, harness, use("broker", 18.4, 300, 350)),
			map[string]string{"steady: controller+broker CPU": "MET", "steady: controller+broker RSS": "MET"}, "18.4 % (the embedded process) over 49.0 s steady, 10000 devices"},
		{"embedded over the memory target", steadyRun("embedded", 10000, "broker", 49, harness, use("broker", 18.4, 1118, 1150)),
			map[string]string{"steady: controller+broker CPU": "MET", "steady: controller+broker RSS": "MISSED"}, "max 1,150 MB, mean 1,118 MB"},
		{"embedded over the CPU target", steadyRun("embedded", 10000, "broker", 49, harness, use("broker", 25.1, 300, 350)),
			map[string]string{"steady: controller+broker CPU": "MISSED", "steady: controller+broker RSS": "MET"}, ""},
		{"mosquitto with the controller apart", steadyRun("mosquitto", 10000, "controller", 49, harness, use("broker", 4.8, 266, 270), use("controller", 10, 150, 180)),
			map[string]string{"steady: controller+broker CPU": "MET", "steady: controller RSS": "MET"}, "14.8 % (controller 10.0 % + mosquitto 4.8 %)"},
		{"mosquitto, the controller too big", steadyRun("mosquitto", 10000, "controller", 49, harness, use("broker", 4.8, 266, 270), use("controller", 21, 190, 210)),
			map[string]string{"steady: controller+broker CPU": "MISSED", "steady: controller RSS": "MISSED"}, "Mosquitto's max 270 MB"},
		{"aedes with the controller apart: CPU only", steadyRun("aedes", 10000, "controller", 49, harness, use("broker", 12, 300, 320), use("controller", 10, 150, 180)),
			map[string]string{"steady: controller+broker CPU": "MET"}, ""},
		{"external with the controller apart: its broker not sampled", steadyRun("external", 10000, "controller", 49, harness, use("controller", 10, 150, 180)),
			map[string]string{"steady: controller+broker CPU": "not evaluated"}, ""},
		{"mosquitto, the controller in the harness", steadyRun("mosquitto", 10000, "harness", 49, harness, use("broker", 4.8, 266, 270)),
			map[string]string{"steady: controller+broker CPU": "not evaluated"}, ""},
		{"too short a steady state", steadyRun("embedded", 10000, "broker", 9, harness, use("broker", 18.4, 300, 350)),
			map[string]string{"steady: controller+broker CPU": "not evaluated"}, ""},
		{"a small fleet: no steady targets", steadyRun("embedded", 999, "broker", 49, harness, use("broker", 90, 3000, 3000)), nil, ""},
		{"a cluster: no steady targets", steadyRun("aedes-cluster", 10000, "", 49, harness), nil, ""},
		{"no resources sampled", func() *Result { r := run(); r.Config.Devices = 10000; return r }(), nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := map[string]string{}
			gots := ""
			for _, tg := range c.r.CheckTargets(2*time.Second, 4*time.Second) {
				if !strings.HasPrefix(tg.Name, "steady: ") {
					continue
				}
				switch {
				case tg.NotEvaluated != "":
					got[tg.Name] = "not evaluated"
					if tg.Met {
						t.Errorf("%s: not evaluated yet met", tg.Name)
					}
				case tg.Met:
					got[tg.Name] = "MET"
				default:
					got[tg.Name] = "MISSED"
				}
				gots += tg.Got + "\n"
			}
			if len(got) != len(c.want) {
				t.Fatalf("targets %v, want %v", got, c.want)
			}
			for name, v := range c.want {
				if got[name] != v {
					t.Errorf("%s: %s, want %s (all: %v)", name, got[name], v, got)
				}
			}
			if !strings.Contains(gots, c.got) {
				t.Errorf("got lines lack %q:\n%s", c.got, gots)
			}
		})
	}
}

// TestResourcesText: the table of processes, the targets not evaluated
// with their reason, and the JSON section.
func TestResourcesText(t *testing.T) {
	r := steadyRun("mosquitto", 10000, "harness", 49, use("harness", 42, 1900, 1950), use("broker", 4.8, 266, 1266))
	r.Resources.Cycles = []Window{{Cycle: 1, From: time.Date(2026, 12, 5, 3, 0, 50, 0, time.UTC), To: time.Date(2026, 12, 5, 3, 1, 40, 0, time.UTC), SpanS: 49, Processes: r.Resources.Steady.Processes}}
	r.Targets = r.CheckTargets(2*time.Second, 4*time.Second)
	var b bytes.Buffer
	if err := r.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"resources (from /proc every 1.000 s; steady: the last half)", "harness's role", "42.0 %", "1,900 MB / 1,950 MB",
		"4.8 %", "266 MB / 1,266 MB", "steady over 49.0 s, the run over 98.0 s",
		"not evaluated: the controller runs in the harness's process"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	var j bytes.Buffer
	if err := r.WriteJSON(&j); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Resources struct {
			Steady struct {
				Processes []map[string]any `json:"processes"`
			} `json:"steady"`
			Cycles []map[string]any `json:"cycles"`
		} `json:"resources"`
		Targets []Target `json:"targets"`
	}
	if err := json.Unmarshal(j.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	p := back.Resources.Steady.Processes
	if len(p) != 2 || p[1]["process"] != "broker" || p[1]["cpu_pct_of_core"] != 4.8 || p[1]["rss_max_mb"] != 1266.0 {
		t.Errorf("steady processes in JSON: %v", p)
	}
	if c := back.Resources.Cycles; len(c) != 1 || c[0]["cycle"] != 1.0 || c[0]["from"] != "2026-12-05T03:00:50Z" {
		t.Errorf("cycles in JSON: %v", c)
	}
	last := back.Targets[len(back.Targets)-1]
	if last.Name != "steady: controller+broker CPU" || last.NotEvaluated == "" || last.Met {
		t.Errorf("last target %+v", last)
	}
}

// TestReturnCost: each cycle's return, in all and per device, each
// process beside the others, and how busy the machine was; in the text
// and in the JSON.
func TestReturnCost(t *testing.T) {
	r := steadyRun("mosquitto", 10000, "controller", 49, use("harness", 42, 1900, 1950), use("broker", 4.8, 266, 270), use("controller", 5, 130, 140))
	t0 := time.Date(2026, 12, 5, 3, 0, 0, 0, time.UTC)
	r.Resources.Returns = []Return{{Cycle: 1, From: t0, To: t0.Add(15700 * time.Millisecond), SpanS: 15.7, Devices: 10000, CPUs: 2,
		Processes: []ReturnCost{
			NewReturnCost("harness", 14970*time.Millisecond, 10000),
			NewReturnCost("broker", 10620*time.Millisecond, 10000),
			NewReturnCost("controller", 3310*time.Millisecond, 10000),
		}}}
	rt := r.Resources.Returns[0]
	if got := float64(rt.Total()); got < 28.899 || got > 28.901 {
		t.Errorf("total %v s, want 28.9", got)
	}
	if got := float64(rt.Busy()); got < 92.0 || got > 92.1 {
		t.Errorf("busy %v %%, want 28.9 / (15.7 × 2) = 92.0 %%", got)
	}
	var b bytes.Buffer
	if err := r.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"return cost (CPU from the broker's return to the end of the cycle's recovery",
		"harness", "15.0 s (1.50 ms)", "10.6 s (1.06 ms)", "3.310 s (0.33 ms)", "28.9 s (2.89 ms)", "92.0 % of 2 CPUs"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("summary lacks %q:\n%s", want, b.String())
		}
	}
	if got := NewReturnCost("broker", time.Second, 0).CPUMsPerDevice; valid(got) {
		t.Errorf("per device of no device: %v, want not a number", got)
	}
	var j bytes.Buffer
	if err := r.WriteJSON(&j); err != nil {
		t.Fatal(err)
	}
	var back struct {
		Resources struct {
			Returns []struct {
				Devices   int              `json:"devices"`
				CPUs      int              `json:"cpus"`
				Processes []map[string]any `json:"processes"`
			} `json:"returns"`
		} `json:"resources"`
	}
	if err := json.Unmarshal(j.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if rs := back.Resources.Returns; len(rs) != 1 || rs[0].Devices != 10000 || rs[0].CPUs != 2 || len(rs[0].Processes) != 3 ||
		rs[0].Processes[1]["process"] != "broker" || rs[0].Processes[1]["cpu_s"] != 10.62 || rs[0].Processes[1]["cpu_ms_per_device"] != 1.062 {
		t.Errorf("returns in JSON: %+v", rs)
	}
}
