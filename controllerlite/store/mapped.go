package store

import (
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
)

// ReleaseMapped gives back the pages of db's memory map that this process
// has touched, so that they count in its resident memory (RSS) only until
// the next time they are read.
//
// bbolt reads its file through a shared, read-only memory map. Every page
// a transaction reads stays mapped into the process, and with it in the
// process's RSS, until the kernel needs the memory. A fleet of 10,000
// devices touches every page of the history (each device's samples are
// appended to its own leaf) and of the store (each device's record) within
// a minute, so the controller's RSS grew by the size of its files: 75 MB
// of its 213 MB against Mosquitto (docs/scale.md). The data does not go
// away: the pages stay in the kernel's page cache, as for any file read,
// where they are shared and the first to be reclaimed, and the next
// reading maps them again (a minor fault, no disk read while cached).
//
// It runs inside a read transaction: bbolt holds its remap lock for as
// long as one is open, so the mapping cannot move or grow meanwhile. What
// bbolt writes goes through the file, never through the map, so dropping
// the map's pages loses nothing. Where the system has no such call it does
// nothing.
func ReleaseMapped(db *bbolt.DB) error {
	return db.View(func(tx *bbolt.Tx) error {
		if tx.Size() == 0 {
			return nil
		}
		return releaseMapped(db.Info().Data, uintptr(tx.Size()), db.Path())
	})
}

// ReleaseEvery is how often a MapReleaser releases at most. A fleet's
// return commits hundreds of times a second, and releasing after each
// commit cost more than it gave back: every next commit faulted the pages
// of the tree's path in again, and each release unmaps pages under the
// feet of every thread (10,000 devices: an Event's way through the
// controller 0.1-0.3 s slower at the median, docs/scale.md). Once a second
// costs nothing measurable and keeps what stays mapped to what a second
// of writes touches.
const ReleaseEvery = time.Second

// A MapReleaser releases a database's mapped pages (ReleaseMapped) after
// its writes, at most once per ReleaseEvery. Its methods may be called
// from any goroutine.
type MapReleaser struct {
	db   *bbolt.DB
	next atomic.Int64 // unix ns before which AfterWrite does nothing
}

// NewMapReleaser returns a MapReleaser of db; its first AfterWrite
// releases.
func NewMapReleaser(db *bbolt.DB) *MapReleaser { return &MapReleaser{db: db} }

// AfterWrite releases db's mapped pages unless that was done less than
// ReleaseEvery ago. A failure costs memory only, so it is not reported.
func (r *MapReleaser) AfterWrite() {
	now := time.Now().UnixNano()
	next := r.next.Load()
	if now < next || !r.next.CompareAndSwap(next, now+int64(ReleaseEvery)) {
		return
	}
	_ = ReleaseMapped(r.db)
}
