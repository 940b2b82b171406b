package history

import (
	"errors"
	"fmt"
)

// Compaction folds each device's samples older than RawWindow into
// BucketSize buckets and deletes buckets older than Retention.
//
// The heating and cooling seconds are integrated between samples: a
// sample's outputs hold until the next sample, or for MaxGap at most. The
// last sample before the cut is kept raw when its outputs hold past the
// cut, so the next compaction, or a query, counts the rest of its time in
// the buckets after the cut; each device records in its bucket how far it
// has been compacted (keyCompacted), and samples before that are the
// buckets' business, not raw.

// floorDiv rounds x down to a multiple of m (m > 0), also below zero.
func floorDiv(x, m int64) int64 {
	q := x / m
	if x%m != 0 && x < 0 {
		q--
	}
	return q * m
}

// spread adds the time [a, b) (unix ms), during which s's outputs held, to
// the heating and cooling of the buckets of step ms it overlaps, clipped
// to [lo, hi).
func spread(s sample, a, b, lo, hi, step int64, at func(start int64) *acc) {
	heat, cool := s.flags&flagHeat != 0, s.flags&flagCool != 0
	if !heat && !cool {
		return
	}
	a, b = max(a, lo), min(b, hi)
	for a < b {
		start := floorDiv(a, step)
		e := min(b, start+step)
		x := at(start)
		if heat {
			x.heatMs += e - a
		}
		if cool {
			x.coolMs += e - a
		}
		a = e
	}
}

// Compact runs a compaction now (the background one runs every
// CompactEvery): samples before now-RawWindow, rounded down to a bucket,
// become buckets; buckets before now-Retention are deleted, and so is a
// device with nothing left.
//
// compactChunk devices per transaction, so a flush waits for a few
// devices at most. (One transaction per device was an fsync per device:
// 10,000 devices kept a controller's cold start waiting for 10,000
// fsyncs.) A chunk that fails is done again a device per transaction, so
// a device that fails leaves the others compacted.
func (h *History) Compact() error {
	if ok, _ := h.usable(); !ok {
		return nil // being checked (compacted when it ends), or failed (logged then)
	}
	now := h.o.Now()
	cutoff := floorDiv(now.Add(-RawWindow).Unix(), int64(BucketSize.Seconds()))
	expire := max(now.Add(-Retention).Unix(), 0)
	fold := func(done int64, ss []sample, next int64) (map[int64]*acc, int) {
		return h.fold(cutoff*1000, done, ss, next)
	}
	step := func(after string, n int) (string, error) {
		h.writeMu.Lock()
		defer h.writeMu.Unlock()
		return h.be.compactNext(after, n, cutoff, expire, fold)
	}
	var errs []error
	for after := ""; ; {
		last, err := step(after, compactChunk)
		if err == nil {
			if last == "" {
				return errors.Join(errs...)
			}
			after = last
			continue
		}
		if last == "" { // not even a device to blame: the database
			return errors.Join(append(errs, fmt.Errorf("history: compact: %w", err))...)
		}
		for range compactChunk {
			id, err := step(after, 1)
			if err != nil {
				errs = append(errs, fmt.Errorf("history: compact %s: %w", id, err))
			}
			if id == "" {
				return errors.Join(errs...)
			}
			after = id
		}
	}
}

// compactChunk is how many devices one compaction transaction covers.
const compactChunk = 64

// fold folds a device's raw samples before cutMs (ss, in time order;
// next is the time of the first at or after cutMs, -1 if none), the
// device having been compacted up to done (unix s), into buckets by
// start (unix ms). It names the sample to keep raw, -1 if none: the last
// one, when its outputs hold past the cut.
func (h *History) fold(cutMs, done int64, ss []sample, next int64) (accs map[int64]*acc, keep int) {
	bucketMs := BucketSize.Milliseconds()
	gap := h.o.MaxGap.Milliseconds()
	lo := done * 1000 // a sample before lo is the one kept raw last time
	if done == 0 && len(ss) > 0 {
		lo = floorDiv(ss[0].ms, bucketMs)
	}
	accs = map[int64]*acc{}
	at := func(start int64) *acc {
		a := accs[start]
		if a == nil {
			a = &acc{}
			accs[start] = a
		}
		return a
	}
	keep = -1
	for i, s := range ss {
		if s.ms >= lo {
			at(floorDiv(s.ms, bucketMs)).addSample(s)
		}
		end := s.ms + gap
		switch {
		case i+1 < len(ss):
			end = min(end, ss[i+1].ms)
		case next >= 0:
			end = min(end, next)
		}
		spread(s, s.ms, end, lo, cutMs, bucketMs, at)
		if i == len(ss)-1 && end > cutMs {
			keep = i
		}
	}
	return accs, keep
}
