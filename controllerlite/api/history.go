package api

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/thermofleet/thermo/controllerlite/history"
)

// History is the telemetry history the API serves; *history.History
// implements it. Zero from, to or step ask for its defaults, and its
// rules refuse a bad query with history.ErrInvalid.
type History interface {
	Query(id string, from, to time.Time, step time.Duration) (history.Result, error)
}

// GET /api/devices/{id}/history?from=RFC3339&to=RFC3339&step=DURATION
//
// from and to are RFC 3339 times or unix seconds (to defaults to now,
// from to 24 h before to); step is a Go duration ("15m"), days ("1d") or
// seconds
// (defaults to the smallest of 1m, 5m, 15m, 1h, 6h, 1d giving at most 500
// points). The answer:
//
//	{"device":"d1","from":"2026-12-03T00:00:00Z","to":"2026-12-04T00:00:00Z","step_s":900,
//	 "points":[{"t":"2026-12-03T00:00:00Z","temp_c":{"min":19.8,"mean":20.1,"max":20.4},
//	            "setpoint_c":20.5,"heating_s":420,"cooling_s":0,"samples":30}]}
//
// from is rounded down to the step; t is a bucket's start; buckets without
// data are left out, temp_c when no reading was valid, setpoint_c (the
// last in the bucket) when unknown. Numbers are rounded to 0.01.

type historyJSON struct {
	Device string      `json:"device"`
	From   string      `json:"from"`
	To     string      `json:"to"`
	StepS  int64       `json:"step_s"`
	Points []pointJSON `json:"points"`
}

type pointJSON struct {
	T         string    `json:"t"`
	TempC     *tempJSON `json:"temp_c,omitempty"`
	SetpointC *float64  `json:"setpoint_c,omitempty"`
	HeatingS  float64   `json:"heating_s"`
	CoolingS  float64   `json:"cooling_s"`
	Samples   int       `json:"samples"`
}

type tempJSON struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

func (h *handler) history(w http.ResponseWriter, r *http.Request) {
	if h.opts.History == nil {
		writeError(w, http.StatusNotFound, "history is off")
		return
	}
	id := r.PathValue("id")
	if _, ok := h.f.Device(id); !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown device %q", id))
		return
	}
	q := r.URL.Query()
	from, err := parseTime(q.Get("from"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "from: "+err.Error())
		return
	}
	to, err := parseTime(q.Get("to"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "to: "+err.Error())
		return
	}
	step, err := parseStep(q.Get("step"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "step: "+err.Error())
		return
	}
	res, err := h.opts.History.Query(id, from, to, step)
	switch {
	case errors.Is(err, history.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
		return
	case errors.Is(err, history.ErrChecking):
		w.Header().Set("Retry-After", "5")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return
	case err != nil:
		h.log.Error("api: history", "device", id, "error", err)
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	out := historyJSON{Device: id, From: rfc3339(res.From), To: rfc3339(res.To), StepS: int64(res.Step / time.Second),
		Points: make([]pointJSON, 0, len(res.Points))}
	for _, p := range res.Points {
		pj := pointJSON{T: rfc3339(p.T), HeatingS: round(p.HeatingS), CoolingS: round(p.CoolingS), Samples: p.Samples}
		if p.TempN > 0 {
			pj.TempC = &tempJSON{Min: round(p.TempMin), Mean: round(p.TempMean), Max: round(p.TempMax)}
		}
		if p.SetpointN > 0 {
			sp := round(p.Setpoint)
			pj.SetpointC = &sp
		}
		out.Points = append(out.Points, pj)
	}
	writeJSON(w, http.StatusOK, out)
}

// parseTime reads an RFC 3339 time or unix seconds; "" is the zero time
// (the default).
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 || n > 1<<40 {
			return time.Time{}, fmt.Errorf("%d is not a plausible unix time", n)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time (2026-12-03T00:00:00Z) nor unix seconds", s)
	}
	return t.UTC(), nil
}

// parseStep reads a Go duration, whole days ("1d") or whole seconds; ""
// is 0 (the default).
func parseStep(s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	if n, err := strconv.ParseInt(s, 10, 64); err == nil {
		if n <= 0 || n > int64(history.MaxRange/time.Second) {
			return 0, fmt.Errorf("%d seconds is out of range", n)
		}
		return time.Duration(n) * time.Second, nil
	}
	if days, ok := strings.CutSuffix(s, "d"); ok { // 1d: Go durations stop at hours
		if n, err := strconv.ParseInt(days, 10, 64); err == nil && n > 0 && n <= int64(history.MaxRange/(24*time.Hour)) {
			return time.Duration(n) * 24 * time.Hour, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("%q is neither a duration (15m, 1h, 1d) nor seconds", s)
	}
	return d, nil
}

func rfc3339(t time.Time) string { return t.UTC().Format(time.RFC3339) }

// round rounds to hundredths, the API's precision.
func round(x float64) float64 { return math.Round(x*100) / 100 }
