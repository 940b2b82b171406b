package stats

import (
	"math"
	"testing"
)

func same(a, b float64) bool {
	if math.IsNaN(a) || math.IsNaN(b) {
		return math.IsNaN(a) && math.IsNaN(b)
	}
	return math.Abs(a-b) < 1e-12
}

func seq(n int) []float64 {
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = float64(n - i) // descending: Percentile must sort
	}
	return xs
}

func TestPercentile(t *testing.T) {
	nan := math.NaN()
	cases := []struct {
		name string
		xs   []float64
		p    float64
		want float64
	}{
		{"empty", nil, 50, nan},
		{"one sample p50", []float64{3}, 50, 3},
		{"one sample p99", []float64{3}, 99, 3},
		{"p0 invalid", []float64{1, 2}, 0, nan},
		{"p over 100 invalid", []float64{1, 2}, 101, nan},
		{"p NaN invalid", []float64{1, 2}, nan, nan},
		{"p50 of 1..10 is the 5th", seq(10), 50, 5},
		{"p50 of 1..11 is the 6th", seq(11), 50, 6},
		{"p90 of 1..10", seq(10), 90, 9},
		{"p99 of 1..10 is the max", seq(10), 99, 10},
		{"p99 of 1..100 is the 99th", seq(100), 99, 99},
		{"p99 of 1..1000 is the 990th", seq(1000), 99, 990},
		{"p100 is the max", seq(7), 100, 7},
		{"p1 of 1..100 is the min", seq(100), 1, 1},
		{"ties", []float64{0.2, 0.2, 0.2, 5}, 50, 0.2},
		{"two samples p50 is the lower", []float64{2, 1}, 50, 1},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Percentile(c.xs, c.p); !same(got, c.want) {
				t.Fatalf("Percentile(%v, %v) = %v, want %v", c.xs, c.p, got, c.want)
			}
		})
	}
}

func TestPercentileLeavesInputAlone(t *testing.T) {
	xs := []float64{3, 1, 2}
	Percentile(xs, 50)
	if xs[0] != 3 || xs[1] != 1 || xs[2] != 2 {
		t.Fatalf("input reordered: %v", xs)
	}
}

func TestMeanAndRatio(t *testing.T) {
	cases := []struct {
		name      string
		got, want float64
	}{
		{"mean", Mean([]float64{1, 2, 3, 6}), 3},
		{"mean of none", Mean(nil), math.NaN()},
		{"ratio", Ratio(0.4, 8), 0.05},
		{"ratio equal", Ratio(2, 2), 1},
		{"ratio by zero", Ratio(1, 0), math.NaN()},
		{"ratio by negative", Ratio(1, -1), math.NaN()},
		{"ratio of NaN", Ratio(math.NaN(), 1), math.NaN()},
		{"ratio by NaN", Ratio(1, math.NaN()), math.NaN()},
		{"zero over positive", Ratio(0, 3), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if !same(c.got, c.want) {
				t.Fatalf("got %v, want %v", c.got, c.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	cases := []struct {
		name string
		xs   []float64
		want Summary
	}{
		{"empty", nil, Summary{N: 0, Mean: math.NaN(), P50: math.NaN(), P90: math.NaN(), P99: math.NaN(), Max: math.NaN()}},
		{"1..100", seq(100), Summary{N: 100, Mean: 50.5, P50: 50, P90: 90, P99: 99, Max: 100}},
		{"one slow outlier", []float64{0.1, 0.1, 0.1, 0.1, 9}, Summary{N: 5, Mean: 1.88, P50: 0.1, P90: 9, P99: 9, Max: 9}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			g := Summarize(c.xs)
			if g.N != c.want.N || !same(g.Mean, c.want.Mean) || !same(g.P50, c.want.P50) || !same(g.P90, c.want.P90) ||
				!same(g.P99, c.want.P99) || !same(g.Max, c.want.Max) {
				t.Fatalf("Summarize = %+v, want %+v", g, c.want)
			}
		})
	}
}
