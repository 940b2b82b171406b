package history

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.etcd.io/bbolt"
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

// compactedUntil is the unix second up to which a device's samples have
// been folded into buckets; 0 if never.
func compactedUntil(dev *bbolt.Bucket) int64 {
	v := dev.Get(keyCompacted)
	if len(v) != 8 {
		return 0
	}
	return int64(binary.BigEndian.Uint64(v))
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
func (h *History) Compact() error {
	now := h.o.Now()
	cutoff := floorDiv(now.Add(-RawWindow).Unix(), int64(BucketSize.Seconds()))
	expire := now.Add(-Retention).Unix()
	var ids [][]byte
	if err := h.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEachBucket(func(k []byte) error {
			ids = append(ids, slices.Clone(k))
			return nil
		})
	}); err != nil {
		return fmt.Errorf("history: compact: %w", err)
	}
	// compactChunk devices per transaction, so a flush waits for a few
	// devices at most. (One transaction per device was an fsync per
	// device: 10,000 devices kept a controller's cold start waiting for
	// 10,000 fsyncs.) A chunk that fails is done again a device per
	// transaction, so a device that fails leaves the others compacted.
	var errs []error
	for chunk := range slices.Chunk(ids, compactChunk) {
		if h.compactDevices(chunk, cutoff, expire) == nil {
			continue
		}
		for _, id := range chunk {
			if err := h.compactDevices([][]byte{id}, cutoff, expire); err != nil {
				errs = append(errs, fmt.Errorf("history: compact %s: %w", id, err))
			}
		}
	}
	return errors.Join(errs...)
}

// compactDevices compacts ids in one transaction.
func (h *History) compactDevices(ids [][]byte, cutoff, expire int64) error {
	h.writeMu.Lock()
	defer h.writeMu.Unlock()
	return h.db.Update(func(tx *bbolt.Tx) error {
		devs := tx.Bucket(bucketDevices)
		for _, id := range ids {
			dev := devs.Bucket(id)
			if dev == nil { // deleted meanwhile
				continue
			}
			empty, err := h.compactDevice(dev, cutoff, expire)
			if err != nil {
				return err
			}
			if empty {
				if err := devs.DeleteBucket(id); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

// compactChunk is how many devices one compaction transaction covers.
const compactChunk = 64

// compactDevice compacts one device's bucket up to cutoff and expires what
// is before expire (unix seconds). It reports whether nothing is left.
func (h *History) compactDevice(dev *bbolt.Bucket, cutoff, expire int64) (empty bool, err error) {
	raw, err := dev.CreateBucketIfNotExists(subRaw)
	if err != nil {
		return false, err
	}
	buckets, err := dev.CreateBucketIfNotExists(subBuckets)
	if err != nil {
		return false, err
	}
	raw.FillPercent, buckets.FillPercent = 1, 1 // both appended in time order
	bucketMs := BucketSize.Milliseconds()
	gap := h.o.MaxGap.Milliseconds()

	if done := compactedUntil(dev); cutoff > done {
		cutMs := cutoff * 1000
		var (
			ss   []sample
			next = int64(-1) // the first sample at or after the cut
			c    = raw.Cursor()
		)
		for k, v := c.First(); k != nil; k, v = c.Next() {
			ms, ok := rawTime(k)
			if !ok {
				return false, fmt.Errorf("raw key %x: %w", k, errEncoding)
			}
			if ms >= cutMs {
				next = ms
				break
			}
			s, err := decodeRaw(ms, v)
			if err != nil {
				return false, fmt.Errorf("raw sample at %d: %w", ms, err)
			}
			ss = append(ss, s)
		}
		lo := done * 1000 // a sample before lo is the one kept raw last time
		if done == 0 && len(ss) > 0 {
			lo = floorDiv(ss[0].ms, bucketMs)
		}
		accs := map[int64]*acc{}
		at := func(start int64) *acc {
			a := accs[start]
			if a == nil {
				a = &acc{}
				accs[start] = a
			}
			return a
		}
		keep := -1
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
		for _, start := range slices.Sorted(maps.Keys(accs)) {
			if err := buckets.Put(bucketKey(start/1000), encodeBucket(nil, *accs[start])); err != nil {
				return false, err
			}
		}
		for i, s := range ss {
			if i != keep {
				if err := raw.Delete(rawKey(s.ms)); err != nil {
					return false, err
				}
			}
		}
		if err := dev.Put(keyCompacted, binary.BigEndian.AppendUint64(nil, uint64(cutoff))); err != nil {
			return false, err
		}
	}

	// Retention: buckets, and a stale raw sample, before expire.
	if expire <= 0 {
		expire = 0
	}
	if err := deleteBefore(buckets, bucketKey(expire)); err != nil {
		return false, err
	}
	if err := deleteBefore(raw, rawKey(expire*1000)); err != nil {
		return false, err
	}
	k1, _ := raw.Cursor().First()
	k2, _ := buckets.Cursor().First()
	return k1 == nil && k2 == nil, nil
}

// deleteBefore deletes b's keys before limit.
func deleteBefore(b *bbolt.Bucket, limit []byte) error {
	var old [][]byte
	c := b.Cursor()
	for k, _ := c.First(); k != nil && string(k) < string(limit); k, _ = c.Next() {
		old = append(old, slices.Clone(k))
	}
	for _, k := range old {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
