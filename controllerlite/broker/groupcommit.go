package broker

import (
	"bytes"
	"fmt"
	"sync"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/controllerlite/store"
)

// kvStore is the embedded broker's bbolt file, in mochi's layout (one
// bucket, keys "CL_<id>", "RET_<topic>", ...), written by group commit:
// every write waits until it is durable, as it did in mochi's own hook, but
// writes that arrive while a transaction is being committed share the next
// transaction and its fsync instead of queueing for one each.
//
// mochi's bolt hook (v2.7.9) commits every client record and every retained
// message in a transaction of its own. bbolt has one writer at a time and an
// fdatasync per commit, so a fleet returning to a restarted broker queued
// there one device after another: with 1,000 devices about 2 ms each (two
// commits: the client record at CONNECT, the retained status right after),
// and a profile of the return showed every connection's attach waiting in
// that queue. See docs/scale.md.
type kvStore struct {
	db      *bbolt.DB
	bucket  []byte
	release *store.MapReleaser // gives back the file's mapped pages

	mu      sync.Mutex
	pending []kvOp
	waiters []chan error
	running bool // a goroutine is committing; it takes what is pending next
}

// kvOp is a put, or a delete when val is nil.
type kvOp struct {
	key, val []byte
}

// openKV opens (creating) the store at path with the given bucket.
func openKV(path, bucket string, opts *bbolt.Options) (*kvStore, error) {
	db, err := bbolt.Open(path, 0o600, opts)
	if err != nil {
		return nil, err
	}
	if err := db.Update(func(tx *bbolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists([]byte(bucket))
		return err
	}); err != nil {
		db.Close()
		return nil, err
	}
	return &kvStore{db: db, bucket: []byte(bucket), release: store.NewMapReleaser(db)}, nil
}

// enqueue adds ops to the next transaction, in order, and returns the
// channel that receives its result once it is committed (nil: durable).
// Writes enqueued one after another are applied in that order, so a caller
// that must order two writes (a record and its deletion) enqueues them under
// its own lock and waits outside it.
func (s *kvStore) enqueue(ops ...kvOp) <-chan error {
	ch := make(chan error, 1)
	s.mu.Lock()
	s.pending = append(s.pending, ops...)
	s.waiters = append(s.waiters, ch)
	if !s.running {
		s.running = true
		go s.commitLoop()
	}
	s.mu.Unlock()
	return ch
}

// write applies ops and waits until they are durable.
func (s *kvStore) write(ops ...kvOp) error { return <-s.enqueue(ops...) }

// commitLoop commits what is pending, one transaction at a time, until
// nothing is.
func (s *kvStore) commitLoop() {
	for {
		s.mu.Lock()
		ops, waiters := s.pending, s.waiters
		s.pending, s.waiters = nil, nil
		if len(waiters) == 0 {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		err := s.db.Update(func(tx *bbolt.Tx) error {
			b := tx.Bucket(s.bucket)
			if b == nil {
				return fmt.Errorf("bucket %q missing", s.bucket)
			}
			for _, op := range ops {
				var err error
				if op.val == nil {
					err = b.Delete(op.key)
				} else {
					err = b.Put(op.key, op.val)
				}
				if err != nil {
					return fmt.Errorf("key %q: %w", op.key, err)
				}
			}
			return nil
		})
		for _, w := range waiters {
			w <- err
		}
		s.release.AfterWrite()
	}
}

// iter calls visit with the value of every key that starts with prefix.
func (s *kvStore) iter(prefix string, visit func(v []byte) error) error {
	p := []byte(prefix)
	return s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(s.bucket)
		if b == nil {
			return fmt.Errorf("bucket %q missing", s.bucket)
		}
		c := b.Cursor()
		for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
			if err := visit(v); err != nil {
				return err
			}
		}
		return nil
	})
}

// close closes the file. Callers stop writing first and have had their
// writes' results (storeHook.Stop waits for every call in flight): the
// commit goroutine, if still about, finds nothing pending and ends.
func (s *kvStore) close() error { return s.db.Close() }
