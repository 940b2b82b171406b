package transport

import (
	"errors"
	"math/rand/v2"
	"syscall"
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

// After returns the wait before reconnect attempt n after the attempt
// before it failed with err (or the connection was lost with err): Delay,
// halved when the broker's host refused the connection. A refused
// connection means the host is up and nothing listens on the port, a
// broker restarting; each attempt costs the host a TCP reset and does not
// wake the broker, so a device may look twice as often and find the broker
// back ~0.2 s sooner on average at the default backoff (docs/scale.md, step
// 17). A host that does not answer and a refused handshake wait the whole
// Delay.
func (b Backoff) After(n int, err error) time.Duration {
	d := b.Delay(n)
	if errors.Is(err, syscall.ECONNREFUSED) {
		d /= 2
	}
	return d
}
