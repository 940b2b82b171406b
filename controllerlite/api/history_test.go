package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/protocol"
)

var day0 = time.Date(2026, 12, 3, 0, 0, 0, 0, time.UTC)

// newHistory is a real history, its clock at the end of day0, holding
// day0 of d1: every 15 minutes the same 30 samples (10 at 19.8 °C, 10 at
// 20.1, 10 at 20.4; heating for the first 14, 7 minutes; setpoint 20.5).
func newHistory(t *testing.T) *history.History {
	t.Helper()
	now := day0.Add(24 * time.Hour)
	h, err := history.Open(t.TempDir(), history.Options{Now: func() time.Time { return now }, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	props := protocol.Props{protocol.PropSetpoint: {Val: 20.5}, protocol.PropMode: {Val: protocol.ModeHeat}}
	for i := range 24 * 4 * 30 {
		at := day0.Add(time.Duration(i) * 30 * time.Second)
		temp := []float64{19.8, 20.1, 20.4}[i%30/10]
		h.Telemetry("d1", at, protocol.Telemetry{V: 1, TS: at, TempC: &temp, Heat: i%30 < 14, SensorOK: true}, props)
	}
	if err := h.Flush(); err != nil {
		t.Fatal(err)
	}
	return h
}

// The point every 15 minutes of day0 is.
const point15 = `{"t":"%s","temp_c":{"min":19.8,"mean":20.1,"max":20.4},"setpoint_c":20.5,"heating_s":420,"cooling_s":0,"samples":30}`

// TestHistoryShape: the answer is exactly the documented JSON.
func TestHistoryShape(t *testing.T) {
	f, _ := newFleet(t, true)
	hdl := NewHandler(f, Options{Logger: quiet, History: newHistory(t)})
	code, body := do(t, hdl, "GET", "/api/devices/d1/history?from=2026-12-03T00:00:00Z&to=2026-12-03T00:30:00Z&step=15m", "")
	if code != 200 {
		t.Fatalf("%d %s", code, body)
	}
	var compact bytes.Buffer
	if err := json.Compact(&compact, []byte(body)); err != nil {
		t.Fatal(err)
	}
	want := `{"device":"d1","from":"2026-12-03T00:00:00Z","to":"2026-12-03T00:30:00Z","step_s":900,"points":[` +
		fmt.Sprintf(point15, "2026-12-03T00:00:00Z") + "," + fmt.Sprintf(point15, "2026-12-03T00:15:00Z") + `]}`
	if compact.String() != want {
		t.Fatalf("body\n %s\nwant\n %s", compact.String(), want)
	}
}

type historyAnswer struct {
	Device string `json:"device"`
	From   string `json:"from"`
	To     string `json:"to"`
	StepS  int64  `json:"step_s"`
	Points []struct {
		T         string                            `json:"t"`
		TempC     *struct{ Min, Mean, Max float64 } `json:"temp_c"`
		SetpointC *float64                          `json:"setpoint_c"`
		HeatingS  float64                           `json:"heating_s"`
		CoolingS  float64                           `json:"cooling_s"`
		Samples   int                               `json:"samples"`
	} `json:"points"`
}

// TestHistoryParams: defaults, the forms of from, to and step, and the
// refusals.
func TestHistoryParams(t *testing.T) {
	f, _ := newFleet(t, true)
	hdl := NewHandler(f, Options{Logger: quiet, History: newHistory(t)})
	unix := func(t time.Time) string { return fmt.Sprint(t.Unix()) }
	tests := []struct {
		name, query string
		code        int
		from, to    string // the answer's; "" not checked
		stepS       int64
		points      int
		heatS       float64 // of the first point
		samples     int     // of the first point
		err         string
	}{
		{"defaults: the last 24 h in 5 minutes", "", 200, "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z", 300, 288, 300, 10, ""},
		{"step as a duration", "?from=2026-12-03T00:00:00Z&step=1h", 200, "2026-12-03T00:00:00Z", "2026-12-04T00:00:00Z", 3600, 24, 4 * 420, 120, ""},
		{"step in seconds", "?from=2026-12-03T00:00:00Z&step=900", 200, "", "", 900, 96, 420, 30, ""},
		{"unix seconds", "?from=" + unix(day0.Add(time.Hour)) + "&to=" + unix(day0.Add(2*time.Hour)) + "&step=15m", 200, "2026-12-03T01:00:00Z", "2026-12-03T02:00:00Z", 900, 4, 420, 30, ""},
		{"from rounded down to the step", "?from=2026-12-03T00:10:00Z&to=2026-12-03T01:00:00Z&step=15m", 200, "2026-12-03T00:00:00Z", "2026-12-03T01:00:00Z", 900, 4, 420, 30, ""},
		{"a minute's step in the raw window", "?from=2026-12-03T00:00:00Z&to=2026-12-03T00:15:00Z&step=1m", 200, "", "", 60, 15, 60, 2, ""},
		{"older than 48 h: 15 minutes at least", "?from=2026-12-01T00:00:00Z", 200, "2026-12-01T00:00:00Z", "2026-12-04T00:00:00Z", 900, 96, 420, 30, ""},
		{"from not a time", "?from=yesterday", 400, "", "", 0, 0, 0, 0, `from: \"yesterday\" is neither`},
		{"to not a time", "?to=2026-12-03", 400, "", "", 0, 0, 0, 0, "to: "},
		{"step not a duration", "?step=banana", 400, "", "", 0, 0, 0, 0, `step: \"banana\" is neither`},
		{"from after to", "?from=2026-12-03T12:00:00Z&to=2026-12-03T11:00:00Z", 400, "", "", 0, 0, 0, 0, "is not before to"},
		{"step under a minute", "?step=30s", 400, "", "", 0, 0, 0, 0, "step 30s is under 1m0s"},
		{"fine step beyond 48 h", "?from=2026-12-01T00:00:00Z&step=5m", 400, "", "", 0, 0, 0, 0, "must be a multiple of 15m0s"},
		{"too many points", "?from=2026-09-01T00:00:00Z&step=15m", 400, "", "", 0, 0, 0, 0, "at most 5000"},
		{"step in days", "?from=2026-11-01T00:00:00Z&step=1d", 200, "2026-11-01T00:00:00Z", "2026-12-04T00:00:00Z", 86400, 1, 96 * 420, 2880, ""},
		{"step in days, not whole", "?step=1.5d", 400, "", "", 0, 0, 0, 0, `step: \"1.5d\" is neither`},
		{"longer than 400 days", "?from=2025-10-01T00:00:00Z&step=24h", 400, "", "", 0, 0, 0, 0, "longer than 400 days"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, hdl, "GET", "/api/devices/d1/history"+tc.query, "")
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
			if tc.err != "" {
				if !strings.Contains(body, tc.err) {
					t.Fatalf("body %s, want %q", body, tc.err)
				}
				return
			}
			var a historyAnswer
			if err := json.Unmarshal([]byte(body), &a); err != nil {
				t.Fatal(err)
			}
			if a.Device != "d1" || tc.from != "" && a.From != tc.from || tc.to != "" && a.To != tc.to || a.StepS != tc.stepS || len(a.Points) != tc.points {
				t.Fatalf("device %s from %s to %s step %d, %d points; want from %s to %s step %d, %d points",
					a.Device, a.From, a.To, a.StepS, len(a.Points), tc.from, tc.to, tc.stepS, tc.points)
			}
			if p := a.Points[0]; p.HeatingS != tc.heatS || p.Samples != tc.samples || p.TempC == nil || p.SetpointC == nil || *p.SetpointC != 20.5 {
				t.Fatalf("first point %+v, want heating %v s over %d samples", p, tc.heatS, tc.samples)
			}
		})
	}
}

// TestHistoryErrors: a known device without history has no points; an
// unknown device, or no history at all, is 404; the token is required.
func TestHistoryErrors(t *testing.T) {
	f, _ := newFleet(t, true)
	hist := newHistory(t)
	tests := []struct {
		name string
		opts Options
		path string
		hdr  []string
		code int
		want string
	}{
		{"known device, no history", Options{History: hist}, "/api/devices/d2/history", nil, 200, `"points": []`},
		{"unknown device", Options{History: hist}, "/api/devices/d9/history", nil, 404, `unknown device \"d9\"`},
		{"history off", Options{}, "/api/devices/d1/history", nil, 404, "history is off"},
		{"no token", Options{History: hist, Token: "s3cret"}, "/api/devices/d1/history", nil, 401, "bearer token"},
		{"token", Options{History: hist, Token: "s3cret"}, "/api/devices/d1/history", []string{"Authorization", "Bearer s3cret"}, 200, `"step_s": 300`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.opts.Logger = quiet
			code, body := do(t, NewHandler(f, tc.opts), "GET", tc.path, "", tc.hdr...)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("%d %s, want %d and %q", code, body, tc.code, tc.want)
			}
		})
	}
	if code, _ := do(t, NewHandler(f, Options{History: hist, Logger: quiet}), "POST", "/api/devices/d1/history", ""); code != http.StatusMethodNotAllowed {
		t.Fatalf("POST: %d", code)
	}
}
