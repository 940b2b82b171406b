// Package stats summarises recovery times for the mttr harness:
// percentiles, means and the ratio of one client's figures to another's.
//
// Percentiles use the nearest-rank method: the p-th percentile of n
// samples is the ceil(p/100·n)-th smallest. It always names a time that
// was really measured and never understates a tail, which is what a
// recovery target ("p99 ≤ 2 s") must be checked against.
package stats

import (
	"math"
	"slices"
)

// Percentile returns the p-th percentile (0 < p ≤ 100) of xs by nearest
// rank, or NaN when xs is empty. xs is not modified.
func Percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 || math.IsNaN(p) || p <= 0 || p > 100 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[rank(len(s), p)]
}

// rank is the index of the p-th percentile among n sorted samples.
func rank(n int, p float64) int {
	// The small epsilon keeps 0.5*100 from becoming 50.000000001 and
	// moving one rank up.
	r := int(math.Ceil(p/100*float64(n)-1e-9)) - 1
	return min(max(r, 0), n-1)
}

// Mean returns the arithmetic mean of xs, or NaN when xs is empty.
func Mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// Ratio returns a/b: how a compares with b (0.1 means a is ten times
// smaller). It is NaN when either is NaN or b is not positive.
func Ratio(a, b float64) float64 {
	if math.IsNaN(a) || math.IsNaN(b) || b <= 0 {
		return math.NaN()
	}
	return a / b
}

// Summary describes a set of samples.
type Summary struct {
	N                        int
	Mean, P50, P90, P99, Max float64
}

// Summarize computes a Summary; every figure is NaN when xs is empty.
func Summarize(xs []float64) Summary {
	s := Summary{N: len(xs), Mean: Mean(xs)}
	if len(xs) == 0 {
		s.P50, s.P90, s.P99, s.Max = math.NaN(), math.NaN(), math.NaN(), math.NaN()
		return s
	}
	sorted := slices.Clone(xs)
	slices.Sort(sorted)
	s.P50 = sorted[rank(len(sorted), 50)]
	s.P90 = sorted[rank(len(sorted), 90)]
	s.P99 = sorted[rank(len(sorted), 99)]
	s.Max = sorted[len(sorted)-1]
	return s
}
