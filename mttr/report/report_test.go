package report

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

func sample(client string, detect, reconnect, resync float64, recovered bool) Sample {
	return Sample{Device: "d", Client: client, DetectS: Seconds(detect), ReconnectS: Seconds(reconnect),
		ResyncS: Seconds(resync), Recovered: recovered, LocalChanges: 3}
}

// run builds a result of two kill cycles and one hang cycle with known
// times: ours resync 0.1..0.4 s, the baseline's 2..8 s, one baseline
// device unrecovered.
func run() *Result {
	t0 := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	r := &Result{Tool: "mttr", Config: Config{Broker: "mosquitto", Devices: 2, BaselineDevices: 2, KeepAliveS: 2, BaselineClient: "paho defaults"}}
	r.Cycles = []Cycle{
		{N: 1, Fault: "kill", FaultAt: t0, UpAt: t0.Add(2 * time.Second), DownS: 2, Samples: []Sample{
			sample(ClientOurs, 0.001, 0.05, 0.1, true), sample(ClientOurs, 0.002, 0.1, 0.2, true),
			sample(ClientBaseline, 0.001, 1.5, 2, true), sample(ClientBaseline, 0.001, 3.5, 4, true)}},
		{N: 2, Fault: "kill", FaultAt: t0.Add(10 * time.Second), UpAt: t0.Add(12 * time.Second), DownS: 2, Samples: []Sample{
			sample(ClientOurs, 0.001, 0.2, 0.3, true), sample(ClientOurs, 0.003, 0.3, 0.4, true),
			sample(ClientBaseline, 0.002, 5, 6, true), sample(ClientBaseline, 0.002, math.NaN(), 8, false)}},
		{N: 3, Fault: "hang", FaultAt: t0.Add(20 * time.Second), UpAt: t0.Add(24 * time.Second), DownS: 4, Samples: []Sample{
			sample(ClientOurs, 1.5, 0.01, 0.02, true), sample(ClientOurs, 2.5, 0.01, 0.03, true),
			sample(ClientBaseline, math.NaN(), math.NaN(), 0.05, true), sample(ClientBaseline, 11, 1, 1.2, true)}},
	}
	r.Cycles[1].Samples[3].LateEvents = 2 // the unrecovered baseline device
	r.Finish()
	return r
}

func TestFinish(t *testing.T) {
	r := run()
	cases := []struct {
		name      string
		got, want float64
	}{
		{"ours kill p50", float64(r.ByFault["kill"].MTTRP50), 0.2},
		{"ours kill p99", float64(r.ByFault["kill"].MTTRP99), 0.4},
		{"ours kill mean", float64(r.ByFault["kill"].MTTRMean), 0.25},
		{"ours hang detect max", float64(r.ByFault["hang"].DetectMax), 2.5},
		{"ours overall samples", float64(r.Summary.Samples), 6},
		{"ours overall p50", float64(r.Summary.MTTRP50), 0.1},
		{"baseline kill p50", float64(r.Baseline.ByFault["kill"].MTTRP50), 4},
		{"baseline kill unrecovered", float64(r.Baseline.ByFault["kill"].Unrecovered), 1},
		{"baseline hang undetected", float64(r.Baseline.ByFault["hang"].Undetected), 1},
		{"baseline reconnect p50 skips NaN", float64(r.Baseline.ByFault["kill"].ReconnectP50), 3.5},
		{"ratio kill p50", float64(r.RatioByFault["kill"].MTTRP50), 0.05},
		{"ratio kill p99", float64(r.RatioByFault["kill"].MTTRP99), 0.05},
		{"cycle 2 ours max", float64(r.Cycles[1].Ours.MTTRMax), 0.4},
		{"cycle 2 baseline unrecovered", float64(r.Cycles[1].Baseline.Unrecovered), 1},
		{"local changes counted", float64(r.Summary.LocalChanges), 18},
		{"late events are the baseline's", float64(r.Baseline.Summary.LateEvents), 2},
		{"no late events of ours", float64(r.Summary.LateEvents), 0},
	}
	for _, c := range cases {
		if math.Abs(c.got-c.want) > 1e-9 {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if !r.RatioByFault["kill"].AtMost || r.RatioByFault["hang"].AtMost {
		t.Errorf("at_most: kill %v (want true: a baseline device never recovered), hang %v (want false)",
			r.RatioByFault["kill"].AtMost, r.RatioByFault["hang"].AtMost)
	}
	if got := r.Faults(); len(got) != 2 || got[0] != "kill" || got[1] != "hang" {
		t.Errorf("Faults() = %v", got)
	}
	if r.Failed() {
		t.Error("Failed() with no loss")
	}
	r.Cycles[0].Samples[0].LostEvents = 1
	r.Finish()
	if !r.Failed() || r.Summary.LostEvents != 1 {
		t.Errorf("a lost event: Failed %v, lost %d", r.Failed(), r.Summary.LostEvents)
	}
}

func TestNoBaseline(t *testing.T) {
	r := run()
	r.Config.BaselineDevices = 0
	r.Finish()
	if r.Baseline != nil || r.Ratio != nil || r.Cycles[0].Baseline != nil {
		t.Fatal("baseline figures without a baseline")
	}
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(b.String(), `"baseline":`) || strings.Contains(b.String(), `"ratio_to_baseline`) {
		t.Fatalf("JSON mentions a baseline: %s", b.String()[:200])
	}
}

func TestJSON(t *testing.T) {
	r := run()
	r.Targets = r.CheckTargets(2*time.Second, 4*time.Second)
	var b bytes.Buffer
	if err := r.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	// The summary carries the keys the issue names, as numbers.
	var raw struct {
		Summary map[string]any `json:"summary"`
		Cycles  []struct {
			Devices []map[string]any `json:"devices"`
		} `json:"cycles"`
		Ratio map[string]any `json:"ratio_to_baseline"`
	}
	if err := json.Unmarshal(b.Bytes(), &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"mttr_mean_s", "mttr_p50_s", "mttr_p99_s", "detect_p50_s", "lost_events", "wrong_winners"} {
		if _, ok := raw.Summary[k].(float64); !ok {
			t.Errorf("summary.%s = %#v, want a number", k, raw.Summary[k])
		}
	}
	if len(raw.Cycles) != 3 || len(raw.Cycles[1].Devices) != 4 {
		t.Fatalf("cycles %d, want 3 with every device", len(raw.Cycles))
	}
	// Not measured is null, not 0 and not an encoding error.
	if v, ok := raw.Cycles[1].Devices[3]["reconnect_s"]; !ok || v != nil {
		t.Errorf("unmeasured reconnect = %#v, want null", v)
	}
	if v := raw.Ratio["mttr_p50"]; v != 0.05 {
		t.Errorf("ratio mttr_p50 = %#v, want 0.05", v)
	}
	// And it reads back.
	var back Result
	if err := json.Unmarshal(b.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Cycles[1].Samples[3].ReconnectS.Valid() || float64(back.Summary.MTTRP50) != 0.1 || !back.Cycles[0].UpAt.Equal(r.Cycles[0].UpAt) {
		t.Fatalf("round trip: %+v", back.Cycles[1].Samples[3])
	}
}

func TestSecondsAndNumberJSON(t *testing.T) {
	cases := []struct {
		v    any
		want string
	}{
		{Seconds(0.123456), "0.1235"},
		{Seconds(12), "12"},
		{NaN, "null"},
		{Seconds(math.Inf(1)), "null"},
		{Number(0.0123456), "0.01235"},
		{Number(123456), "123500"},
		{Number(0), "0"},
		{Number(math.NaN()), "null"},
	}
	for _, c := range cases {
		b, err := json.Marshal(c.v)
		if err != nil || string(b) != c.want {
			t.Errorf("Marshal(%v) = %s, %v; want %s", c.v, b, err, c.want)
		}
	}
	var s Seconds
	if err := json.Unmarshal([]byte(`"x"`), &s); err == nil {
		t.Error("a string read as seconds")
	}
}

// fleet makes run() a fleet of n devices whose kill cycles' devices
// resync in p50 s but one, in last s.
func fleet(n int, p50, last float64) func(*Result) {
	return func(r *Result) {
		r.Config.Devices = n
		for i := range r.Cycles[0].Samples {
			r.Cycles[0].Samples[i].ResyncS = Seconds(p50)
		}
		r.Cycles[1].Samples[0].ResyncS = Seconds(p50)
		r.Cycles[1].Samples[1].ResyncS = Seconds(last)
	}
}

func TestTargets(t *testing.T) {
	cases := []struct {
		name     string
		edit     func(*Result)
		keepDead time.Duration
		missed   []string
	}{
		{"all met", func(*Result) {}, 4 * time.Second, nil},
		{"slow kill p50", func(r *Result) {
			for i := range r.Cycles[0].Samples {
				r.Cycles[0].Samples[i].ResyncS = 0.9
			}
			r.Cycles[1].Samples[0].ResyncS = 0.9
		}, 4 * time.Second, []string{"kill: resync p50"}},
		{"slow kill p99", func(r *Result) { r.Cycles[1].Samples[1].ResyncS = 2.5 }, 4 * time.Second, []string{"kill: resync p99"}},
		{"unrecovered kill", func(r *Result) { r.Cycles[1].Samples[1].Recovered = false }, 4 * time.Second,
			[]string{"kill: resync p50", "kill: resync p99"}},
		{"late hang detection", func(r *Result) { r.Cycles[2].Samples[1].DetectS = 3.1 }, 4 * time.Second, []string{"hang: detection"}},
		{"undetected long hang", func(r *Result) { r.Cycles[2].Samples[1].DetectS = NaN }, 4 * time.Second, []string{"hang: detection"}},
		{"undetected short hang is fine", func(r *Result) { r.Cycles[2].Samples[1].DetectS = NaN }, 2 * time.Second, nil},
		{"lost event", func(r *Result) { r.Cycles[0].Samples[0].LostEvents = 1 }, 4 * time.Second, []string{"kill: lost events"}},
		{"wrong winner", func(r *Result) { r.Cycles[2].Samples[0].WrongWinners = 1 }, 4 * time.Second, []string{"hang: wrong winners"}},
		{"diverged", func(r *Result) { r.Cycles[2].Samples[0].Diverged = true }, 4 * time.Second, []string{"hang: out of sync at cycle end"}},
		{"baseline losses do not count", func(r *Result) { r.Cycles[0].Samples[2].LostEvents = 5 }, 4 * time.Second, nil},
		// Issue 15's targets for fleets: 1,000 devices p50 ≤ 1 s and
		// p99 ≤ 3 s; 10,000 p50 ≤ 5 s and every device within 15 s.
		{"1,000 devices: p50 0.9 s and p99 2.5 s are met", fleet(1000, 0.9, 2.5), 4 * time.Second, nil},
		{"1,000 devices: p50 1.2 s and p99 3.5 s are missed", fleet(1000, 1.2, 3.5), 4 * time.Second, []string{"kill: resync p50", "kill: resync p99"}},
		{"10,000 devices: p50 4 s is met, one device at 16 s misses the max", fleet(10000, 4, 16), 4 * time.Second, []string{"kill: resync max"}},
		{"10,000 devices: p50 4 s and max 14 s are met", fleet(10000, 4, 14), 4 * time.Second, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			r := run()
			c.edit(r)
			r.Finish()
			var missed []string
			for _, tg := range r.CheckTargets(2*time.Second, c.keepDead) {
				if !tg.Met {
					missed = append(missed, tg.Name)
				}
			}
			if strings.Join(missed, ",") != strings.Join(c.missed, ",") {
				t.Fatalf("missed %q, want %q", missed, c.missed)
			}
		})
	}
}

func TestSVG(t *testing.T) {
	r := run()
	var b bytes.Buffer
	if err := r.WriteSVG(&b); err != nil {
		t.Fatal(err)
	}
	// Well-formed XML, with one p50 dot per cycle and client, one
	// "not recovered" marker, and the kill targets drawn.
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	count := map[string]int{}
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("not well-formed: %v\n%s", err, b.String())
		}
		if se, ok := tok.(xml.StartElement); ok {
			count[se.Name.Local]++
		}
	}
	legendDots := 2
	if got := count["circle"]; got != 3*2+legendDots {
		t.Errorf("%d circles, want %d", got, 3*2+legendDots)
	}
	if count["path"] != 1 {
		t.Errorf("%d unrecovered markers, want 1", count["path"])
	}
	for _, want := range []string{"kill target p50", "kill target p99", "cycle 2 (kill), baseline", "0.1 s", "10 s"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("SVG lacks %q", want)
		}
	}
	// An empty run still draws a valid chart.
	var e bytes.Buffer
	if err := (&Result{}).WriteSVG(&e); err != nil || !strings.HasSuffix(e.String(), "</svg>\n") {
		t.Fatalf("empty chart: %v", err)
	}
}

func TestText(t *testing.T) {
	r := run()
	r.Targets = r.CheckTargets(2*time.Second, 4*time.Second)
	r.Skipped = []string{"partition: needs root"}
	var b bytes.Buffer
	if err := r.WriteSummary(&b); err != nil {
		t.Fatal(err)
	}
	out := b.String()
	for _, want := range []string{"kill (4 samples)", "resync (MTTR) p50", "0.200 s", "4.000 s", "≤ 0.05 (≥ 20× faster)", "MET", "skipped: partition: needs root"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	line := CycleLine(r.Cycles[1])
	for _, want := range []string{"2", "kill", "0.400 s", "8.000 s"} {
		if !strings.Contains(line, want) {
			t.Errorf("cycle line lacks %q: %s", want, line)
		}
	}
	if FormatSeconds(NaN) != "—" || FormatSeconds(123.4) != "123 s" || FormatSeconds(12.34) != "12.3 s" {
		t.Error("FormatSeconds")
	}
}
