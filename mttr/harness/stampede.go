package harness

import (
	"math/rand/v2"
	"slices"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/transport"
)

// FleetReturn is what a simulated fleet does when its broker comes back
// after an outage (see SimulateReturn).
type FleetReturn struct {
	Devices int
	// RetryRate is the fleet's connection attempts per second against
	// the dead broker, once every device's backoff has reached its cap.
	RetryRate float64
	// First, P50, P99 and Last are when devices make their first
	// attempt after the broker is back.
	First, P50, P99, Last time.Duration
	// PeakPer100ms is the most first attempts in any 100 ms.
	PeakPer100ms int
}

// SimulateReturn plays n devices losing their broker at the same instant
// and retrying with backoff b (package transport's reconnect loop: attempt
// k waits b.After(k, err), from 0 at every outage), for outage long, and
// reports the retry load on the dead broker and how the devices' first
// attempts spread once it is back. Connection attempts are taken to fail
// at once, refused by the broker's host (ECONNREFUSED: the broker's
// process is down, its host up); seed makes it repeatable when b.Rand is
// nil.
func SimulateReturn(b transport.Backoff, n int, outage time.Duration, seed uint64) FleetReturn {
	if b.Rand == nil {
		b.Rand = rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Float64
	}
	firsts := make([]time.Duration, n)
	var late int // attempts in the last second of the outage
	for i := range firsts {
		t, k := time.Duration(0), 0
		for {
			t += b.After(k, syscall.ECONNREFUSED)
			k++
			if t >= outage {
				break
			}
			if t >= outage-time.Second {
				late++
			}
		}
		firsts[i] = t - outage
	}
	slices.Sort(firsts)
	r := FleetReturn{Devices: n, RetryRate: float64(late), First: firsts[0], Last: firsts[n-1],
		P50: firsts[rankIndex(n, 50)], P99: firsts[rankIndex(n, 99)]}
	for i, j := 0, 0; i < n; i++ {
		for firsts[i]-firsts[j] >= 100*time.Millisecond {
			j++
		}
		r.PeakPer100ms = max(r.PeakPer100ms, i-j+1)
	}
	return r
}

// rankIndex is the nearest-rank index of the p-th percentile of n.
func rankIndex(n int, p float64) int {
	i := int(float64(n)*p/100+0.999999) - 1
	return min(max(i, 0), n-1)
}
