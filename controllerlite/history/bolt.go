package history

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"github.com/thermofleet/thermo/controllerlite/store"
)

// boltBackend keeps the history in a bbolt file of its own: one bucket
// per device holding its raw samples (keys: big-endian unix ms), its
// 15-minute buckets (keys: big-endian unix s) and how far it has been
// compacted, so any range is one cursor seek.
type boltBackend struct {
	db      *bbolt.DB
	release *store.MapReleaser
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

func (b *boltBackend) close() error { return b.db.Close() }

// update runs fn in a write transaction, then gives back the pages of the
// file's memory map (store.MapReleaser): every device's samples go to a
// leaf of their own, so a fleet's flushes touch the whole file within a
// telemetry interval.
func (b *boltBackend) update(fn func(tx *bbolt.Tx) error) error {
	err := b.db.Update(fn)
	b.release.AfterWrite()
	return err
}

func (b *boltBackend) write(batch []sample) error {
	return b.update(func(tx *bbolt.Tx) error {
		devs := tx.Bucket(bucketDevices)
		type dev struct {
			raw       *bbolt.Bucket
			compacted int64 // ms
		}
		open := map[string]dev{}
		for _, s := range batch {
			d, ok := open[s.id]
			if !ok {
				b, err := devs.CreateBucketIfNotExists([]byte(s.id))
				if err != nil {
					return fmt.Errorf("device %s: %w", s.id, err)
				}
				raw, err := b.CreateBucketIfNotExists(subRaw)
				if err != nil {
					return fmt.Errorf("device %s: %w", s.id, err)
				}
				raw.FillPercent = 1 // appended in time order
				d = dev{raw: raw, compacted: compactedUntil(b) * 1000}
				open[s.id] = d
			}
			if s.ms < d.compacted {
				continue
			}
			key := rawKey(s.ms)
			for ms := s.ms + 1; d.raw.Get(key) != nil && ms < s.ms+1000; ms++ {
				key = rawKey(ms)
			}
			// A fresh value each time: bbolt keeps it until the commit.
			if err := d.raw.Put(key, encodeRaw(nil, s)); err != nil {
				return fmt.Errorf("device %s: %w", s.id, err)
			}
		}
		return nil
	})
}

func (b *boltBackend) remove(id string) error {
	return b.update(func(tx *bbolt.Tx) error {
		err := tx.Bucket(bucketDevices).DeleteBucket([]byte(id))
		if errors.Is(err, berrors.ErrBucketNotFound) {
			return nil
		}
		return err
	})
}

// compactNext: in a bbolt file every device is due at every compaction
// (a cursor walk is cheap), so retention runs for each.
func (b *boltBackend) compactNext(after string, n int, cutoff, expire int64, fold foldFunc) (last string, err error) {
	err = b.update(func(tx *bbolt.Tx) error {
		devs := tx.Bucket(bucketDevices)
		var ids [][]byte
		c := devs.Cursor()
		for k, v := c.Seek([]byte(after)); k != nil && len(ids) < n; k, v = c.Next() {
			if v == nil && (after == "" || string(k) > after) {
				ids = append(ids, slices.Clone(k))
			}
		}
		for _, k := range ids {
			last = string(k)
			empty, err := compactBolt(devs.Bucket(k), cutoff, expire, fold)
			if err != nil {
				return err
			}
			if empty {
				if err := devs.DeleteBucket(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
	return last, err
}

// compactBolt compacts one device's bucket up to cutoff and expires what
// is before expire (unix seconds). It reports whether nothing is left.
func compactBolt(dev *bbolt.Bucket, cutoff, expire int64, fold foldFunc) (empty bool, err error) {
	raw, err := dev.CreateBucketIfNotExists(subRaw)
	if err != nil {
		return false, err
	}
	buckets, err := dev.CreateBucketIfNotExists(subBuckets)
	if err != nil {
		return false, err
	}
	raw.FillPercent, buckets.FillPercent = 1, 1 // both appended in time order

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
		accs, keep := fold(done, ss, next)
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

func (b *boltBackend) read(id string, startMs, toMs int64) (st stored, err error) {
	err = b.db.View(func(tx *bbolt.Tx) error {
		dev := tx.Bucket(bucketDevices).Bucket([]byte(id))
		if dev == nil {
			return nil
		}
		st.doneMs = compactedUntil(dev) * 1000
		if bk := dev.Bucket(subBuckets); bk != nil && startMs < st.doneMs {
			c := bk.Cursor()
			for k, v := c.Seek(bucketKey(startMs / 1000)); k != nil; k, v = c.Next() {
				sec, ok := bucketTime(k)
				if !ok {
					return fmt.Errorf("bucket key %x: %w", k, errEncoding)
				}
				if sec*1000 >= min(st.doneMs, toMs) {
					break
				}
				a, err := decodeBucket(v)
				if err != nil {
					return fmt.Errorf("bucket at %d: %w", sec, err)
				}
				st.buckets = append(st.buckets, timedAcc{ms: sec * 1000, a: a})
			}
		}
		lo := max(startMs, st.doneMs)
		raw := dev.Bucket(subRaw)
		if raw == nil || lo >= toMs {
			return nil
		}
		c := raw.Cursor()
		// The sample before lo: its outputs hold into the range.
		k, v := c.Seek(rawKey(lo))
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		if k != nil {
			s, err := decodeStored(k, v)
			if err != nil {
				return err
			}
			st.raw = append(st.raw, s)
		}
		for k, v = c.Seek(rawKey(lo)); k != nil; k, v = c.Next() {
			ms, ok := rawTime(k)
			if !ok {
				return fmt.Errorf("raw key %x: %w", k, errEncoding)
			}
			if ms >= toMs { // only its time counts
				st.raw = append(st.raw, sample{ms: ms})
				break
			}
			s, err := decodeStored(k, v)
			if err != nil {
				return err
			}
			st.raw = append(st.raw, s)
		}
		return nil
	})
	return st, err
}

// decodeStored decodes a raw sample's key and value.
func decodeStored(k, v []byte) (sample, error) {
	ms, ok := rawTime(k)
	if !ok {
		return sample{}, fmt.Errorf("raw key %x: %w", k, errEncoding)
	}
	s, err := decodeRaw(ms, v)
	if err != nil {
		return sample{}, fmt.Errorf("raw sample at %d: %w", ms, err)
	}
	return s, nil
}
