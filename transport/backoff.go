package transport

import (
	"math/rand/v2"
	"time"
)

// Backoff spaces reconnect attempts: the delay doubles from Min up to Max,
// and each delay is drawn uniformly from its upper half ("equal jitter").
// The jitter keeps a fleet that lost its broker at the same instant from
// reconnecting in lock-step; the cap bounds how long a device waits after
// the broker is back. Attempt numbers restart at every outage.
type Backoff struct {
	Min, Max time.Duration
	// Rand returns a float in [0,1); nil uses math/rand/v2.
	Rand func() float64
}

// Delay returns the wait before reconnect attempt n (0 for the first).
func (b Backoff) Delay(n int) time.Duration {
	d := b.Min
	for i := 0; i < n && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max)
	r := rand.Float64
	if b.Rand != nil {
		r = b.Rand
	}
	return d/2 + time.Duration(r()*float64(d/2))
}
