package history

import (
	"errors"
	"fmt"
	"time"
)

// The query rules, in one place: the API applies them through Query.
const (
	// MinStep is the finest step, over the raw samples of RawWindow.
	MinStep = time.Minute
	// MaxPoints bounds the buckets of one query.
	MaxPoints = 5000
	// MaxRange bounds a query's range: what is kept.
	MaxRange = Retention
	// DefaultRange is the range when a query gives no from.
	DefaultRange = 24 * time.Hour
	// defaultPoints is what the default step aims under: a chart's width.
	defaultPoints = 500
)

// defaultSteps are the steps a query without one chooses from.
var defaultSteps = []time.Duration{time.Minute, 5 * time.Minute, 15 * time.Minute, time.Hour, 6 * time.Hour, 24 * time.Hour}

// ErrInvalid marks a query the rules refuse (the API answers 400).
var ErrInvalid = errors.New("invalid history query")

// Result is a query's answer.
type Result struct {
	// From is the query's from rounded down to a multiple of Step (UTC):
	// the start of the first bucket.
	From time.Time
	// To is the query's end (exclusive); the last bucket holds samples
	// up to it.
	To   time.Time
	Step time.Duration
	// Points are the buckets that hold data, in time order; never nil.
	Points []Point
}

// Point is one step of a query: the samples of [T, T+Step).
type Point struct {
	T       time.Time // the bucket's start, aligned to the step in UTC
	Samples int
	// TempN counts the samples with a temperature; TempMin, TempMean and
	// TempMax (°C) mean nothing when it is 0.
	TempN                      int
	TempMin, TempMean, TempMax float64
	// SetpointN counts the samples with a known setpoint; Setpoint is the
	// last in the bucket, SetpointMean their mean.
	SetpointN              int
	Setpoint, SetpointMean float64
	// HeatingS and CoolingS are the seconds the outputs were on.
	HeatingS, CoolingS float64
	// Mode is the last known mode in the bucket, "" if none.
	Mode string
}

// cutoff is the unix second before which samples may have been compacted
// at now.
func cutoff(now time.Time) int64 {
	return floorDiv(now.Add(-RawWindow).Unix(), int64(BucketSize.Seconds()))
}

// plan fills in a query's defaults (to = now, from = to - DefaultRange, a
// step giving at most 500 points) and checks it.
func plan(from, to time.Time, step time.Duration, now time.Time) (Result, error) {
	if to.IsZero() {
		to = now
	}
	if from.IsZero() {
		from = to.Add(-DefaultRange)
	}
	from, to = from.UTC(), to.UTC()
	if !from.Before(to) {
		return Result{}, fmt.Errorf("%w: from %s is not before to %s", ErrInvalid, from.Format(time.RFC3339), to.Format(time.RFC3339))
	}
	if to.Sub(from) > MaxRange {
		return Result{}, fmt.Errorf("%w: the range is longer than %d days, what the history keeps", ErrInvalid, MaxRange/(24*time.Hour))
	}
	cut := cutoff(now)
	// points and old: the buckets from from, aligned, to to; and whether
	// they reach into what may be compacted.
	shape := func(step time.Duration) (start time.Time, n int64, old bool) {
		ms := step.Milliseconds()
		s := floorDiv(from.UnixMilli(), ms)
		n = (to.UnixMilli() - s + ms - 1) / ms
		return time.UnixMilli(s).UTC(), n, s < cut*1000
	}
	if step == 0 {
		step = defaultSteps[len(defaultSteps)-1]
		for _, st := range defaultSteps {
			if _, n, old := shape(st); n <= defaultPoints && (!old || st%BucketSize == 0) {
				step = st
				break
			}
		}
	}
	if step < MinStep {
		return Result{}, fmt.Errorf("%w: step %s is under %s", ErrInvalid, step, MinStep)
	}
	if step%time.Second != 0 {
		return Result{}, fmt.Errorf("%w: step %s is not whole seconds", ErrInvalid, step)
	}
	start, n, old := shape(step)
	if old && step%BucketSize != 0 {
		return Result{}, fmt.Errorf("%w: the range reaches back more than %s, where the history keeps %s buckets: the step (%s) must be a multiple of %s",
			ErrInvalid, RawWindow, BucketSize, step, BucketSize)
	}
	if n > MaxPoints {
		return Result{}, fmt.Errorf("%w: %d points at step %s, at most %d: take a longer step or a shorter range", ErrInvalid, n, step, MaxPoints)
	}
	return Result{From: start, To: to, Step: step}, nil
}

// Query returns a device's history from from to to (exclusive) in steps
// of step. A zero to is now, a zero from is to-DefaultRange, a zero step
// the smallest of 1m, 5m, 15m, 1h, 6h, 1d giving at most 500 points. The
// step must be at least MinStep, and a multiple of BucketSize where the
// range reaches back beyond RawWindow; a bad query is ErrInvalid. A device
// without history has no points.
func (h *History) Query(id string, from, to time.Time, step time.Duration) (Result, error) {
	now := h.o.Now()
	res, err := plan(from, to, step, now)
	if err != nil {
		return Result{}, err
	}
	stepMs := res.Step.Milliseconds()
	startMs, toMs, nowMs := res.From.UnixMilli(), res.To.UnixMilli(), now.UnixMilli()
	accs := make([]acc, (toMs-startMs+stepMs-1)/stepMs)
	at := func(start int64) *acc { return &accs[(start-startMs)/stepMs] }
	gap := h.o.MaxGap.Milliseconds()

	if ok, err := h.usable(); !ok {
		if err == nil {
			err = ErrChecking
		}
		return Result{}, fmt.Errorf("history: query %s: %w", id, err)
	}
	st, err := h.be.read(id, startMs, toMs)
	if err != nil {
		return Result{}, fmt.Errorf("history: query %s: %w", id, err)
	}
	for _, b := range st.buckets {
		at(floorDiv(b.ms-startMs, stepMs) + startMs).merge(b.a)
	}
	if lo := max(startMs, st.doneMs); lo < toMs {
		addRaw(st.raw, lo, toMs, nowMs, gap, stepMs, at)
	}
	res.Points = make([]Point, 0, len(accs))
	for i, a := range accs {
		if !a.empty() {
			res.Points = append(res.Points, a.point(time.UnixMilli(startMs+int64(i)*stepMs).UTC()))
		}
	}
	return res, nil
}

// addRaw adds the raw samples of [lo, hi) to their buckets, and the
// time their outputs held: ss may start with the sample before lo, which
// counts for its time after lo, and end with one at or after hi, which
// ends the time of the one before; the last one's time ends at MaxGap or
// now.
func addRaw(ss []sample, lo, hi, now, gap, step int64, at func(int64) *acc) {
	var (
		cur  sample
		have bool
	)
	for _, s := range ss {
		if have {
			spread(cur, cur.ms, min(s.ms, cur.ms+gap), lo, hi, step, at)
		}
		if s.ms >= hi {
			return
		}
		if s.ms >= lo {
			at(floorDiv(s.ms, step)).addSample(s)
		}
		cur, have = s, true
	}
	if have {
		spread(cur, cur.ms, min(now, cur.ms+gap), lo, hi, step, at)
	}
}

// point is what a query answers of a bucket.
func (a acc) point(t time.Time) Point {
	p := Point{T: t, Samples: a.n, TempN: a.tn, SetpointN: a.spn,
		HeatingS: float64(a.heatMs) / 1000, CoolingS: float64(a.coolMs) / 1000, Mode: modeName(a.mode)}
	if a.tn > 0 {
		p.TempMin, p.TempMax = float64(a.tmin)/100, float64(a.tmax)/100
		p.TempMean = float64(a.tsum) / float64(a.tn) / 100
	}
	if a.spn > 0 {
		p.Setpoint = float64(a.splast) / 100
		p.SetpointMean = float64(a.spsum) / float64(a.spn) / 100
	}
	return p
}
