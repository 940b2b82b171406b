package harness

import (
	"testing"
	"time"

	"github.com/thermofleet/thermo/transport"
)

// TestFleetReturn checks, on transport's own Backoff.After, what
// docs/mttr.md claims of 10,000 devices that lost their broker together
// (its process down, its host refusing connections): their retries on the
// dead broker are capped (at most 4 per device per second), their first
// attempts once it is back spread over half a second instead of arriving
// at once, and that holds for any outage from 15 s to 10 minutes. Run
// with -v to print the figures.
func TestFleetReturn(t *testing.T) {
	b := transport.Backoff{Min: transport.DefaultReconnectMin, Max: transport.DefaultReconnectMax}
	for _, outage := range []time.Duration{15 * time.Second, 2 * time.Minute, 10 * time.Minute} {
		const n = 10000
		r := SimulateReturn(b, n, outage, 1)
		t.Logf("outage %v, %d devices, backoff %v-%v: %.0f attempts/s on the dead broker; first attempts after it is back: p50 %v, p99 %v, last %v; at most %d in any 100 ms",
			outage, n, b.Min, b.Max, r.RetryRate, r.P50.Round(time.Millisecond), r.P99.Round(time.Millisecond), r.Last.Round(time.Millisecond), r.PeakPer100ms)
		if r.RetryRate > 4*n {
			t.Errorf("retry rate %.0f/s over four per device per second", r.RetryRate)
		}
		if r.Last > b.Max/2 {
			t.Errorf("a device waited %v after the broker was back, over half the cap %v", r.Last, b.Max)
		}
		// Spread: no 100 ms holds more than a third of the fleet (all at
		// once would be the whole fleet; spread evenly over the half second
		// of the capped delay, a fifth).
		if r.PeakPer100ms > n/3 {
			t.Errorf("%d first attempts in one 100 ms: a stampede", r.PeakPer100ms)
		}
		if r.P50 > 300*time.Millisecond || r.P50 < 100*time.Millisecond {
			t.Errorf("p50 %v: the jitter no longer spreads as designed", r.P50)
		}
	}
}

// TestSimulateReturnWithoutJitter shows what the jitter prevents: the same
// capped backoff without it brings the whole fleet back in lock-step.
func TestSimulateReturnWithoutJitter(t *testing.T) {
	const n = 1000
	fixed := transport.Backoff{Min: transport.DefaultReconnectMin, Max: transport.DefaultReconnectMax, Rand: func() float64 { return 0.999 }}
	r := SimulateReturn(fixed, n, 15*time.Second, 1)
	if r.PeakPer100ms != n || r.Last != r.First {
		t.Fatalf("without jitter: %d devices in one 100 ms, first %v, last %v; want all %d at the same instant", r.PeakPer100ms, r.First, r.Last, n)
	}
	jittered := SimulateReturn(transport.Backoff{Min: transport.DefaultReconnectMin, Max: transport.DefaultReconnectMax}, n, 15*time.Second, 1)
	if jittered.PeakPer100ms > n/3 {
		t.Fatalf("with jitter: %d in one 100 ms", jittered.PeakPer100ms)
	}
}
