package control

import (
	"time"

	"github.com/thermofleet/thermo/hal"
)

// Counts are what the loop counted since start and how long its outputs
// have run, for metrics: a scrape reads them with Counts, so the loop
// keeps a few integers and nothing per reading.
type Counts struct {
	// ReadErrors are the failed (or rejected) reads of each sensor, in
	// board order: the order of Snapshot.Sensors.
	ReadErrors []uint64
	// Outputs are the wired outputs, heat, cool and fan in that order.
	Outputs []OutputCount
}

// OutputCount is one output's figures.
type OutputCount struct {
	Name string // "heat", "cool" or "fan"
	// Switches counts the output's changes as driven, on or off.
	Switches uint64
	// OnFor is how long the output has been on without a break, on the
	// loop's clock; 0 while it is off. The fan is not timed: always 0.
	OnFor time.Duration
	// MaxRun is the configured max_run after which the loop switches the
	// output off to rest; 0 for the fan, which has none.
	MaxRun time.Duration
}

// counts is the loop's tally, guarded by Loop.mu.
type counts struct {
	readErrors      []uint64
	heat, cool, fan uint64
}

func (c *counts) read(rs []hal.Reading) {
	for i, r := range rs {
		if !r.OK() {
			c.readErrors[i]++
		}
	}
}

func (c *counts) switched(prev, now hal.Outputs) {
	if prev.Heat != now.Heat {
		c.heat++
	}
	if prev.Cool != now.Cool {
		c.cool++
	}
	if prev.Fan != now.Fan {
		c.fan++
	}
}

// Counts returns the loop's counts now.
func (l *Loop) Counts() Counts {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.clock.Now()
	onFor := func(r relay) time.Duration {
		if !r.on {
			return 0
		}
		return now.Sub(r.since)
	}
	c := Counts{ReadErrors: append([]uint64(nil), l.counts.readErrors...)}
	if l.wired.Heat {
		c.Outputs = append(c.Outputs, OutputCount{Name: "heat", Switches: l.counts.heat, OnFor: onFor(l.heat), MaxRun: l.cfg.Heat.MaxRun})
	}
	if l.wired.Cool {
		c.Outputs = append(c.Outputs, OutputCount{Name: "cool", Switches: l.counts.cool, OnFor: onFor(l.cool), MaxRun: l.cfg.Cool.MaxRun})
	}
	if l.wired.Fan {
		c.Outputs = append(c.Outputs, OutputCount{Name: "fan", Switches: l.counts.fan})
	}
	return c
}
