package store

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"runtime/debug"
	"strings"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrCorrupt marks a database file whose pages do not hold a valid bbolt
// database: garbage written over live pages by a failing disk, a bad SD
// card or a stray copy.
var ErrCorrupt = errors.New("database file is corrupt")

// ErrLocked marks a database file held by another process.
var ErrLocked = errors.New("locked by another process (is another controllerlite using this data directory?)")

// lockTimeout bounds the wait for a database's file lock.
const lockTimeout = 2 * time.Second

// Cures a caller appends to ErrCorrupt: what moving the file aside costs.
const (
	// CureController is the cure for the controller's store.
	CureController = "the controller rebuilds the fleet from the broker's retained messages"
	// CureBroker is the cure for the embedded broker's store.
	CureBroker = "the devices and the controller publish their state again (retained) when they reconnect"
	// CureHistory is the cure for the telemetry history's database.
	CureHistory = "the controller starts an empty telemetry history (the charts lose what was recorded)"
)

// OpenVersioned opens (creating if needed, 0600) the bbolt database at
// path with the checks of the controller's own store (every page read
// before use, ErrCorrupt with cure for a corrupt file, ErrLocked for one
// held by another process), refuses one whose "meta" bucket records a
// schema version other than version, records version, and creates the
// named top-level buckets. The controller's store and its history open
// their files with it. When ctx ends during the walk of every page, the
// file is closed and ctx's error returned: a history of gigabytes takes
// seconds to walk, and a controller told to stop must not wait for it.
func OpenVersioned(ctx context.Context, path, cure, version string, buckets ...[]byte) (*bbolt.DB, error) {
	db, err := openBolt(ctx, path, bbolt.Options{}, cure)
	if err != nil {
		return nil, err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if v := meta.Get(keyVersion); v != nil && string(v) != version {
			return fmt.Errorf("written by an incompatible controllerlite (schema %q, this one reads %q)", v, version)
		}
		if err := meta.Put(keyVersion, []byte(version)); err != nil {
			return err
		}
		for _, b := range buckets {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// openBolt's walk has read every page: give them back (memory only).
	_ = ReleaseMapped(db)
	return db, nil
}

// openBolt opens the bbolt database at path and reads every page of it
// before anyone else does. bbolt trusts its pages: garbage in a live page
// makes it panic, or read outside the file and crash the process, in the
// middle of a transaction or even inside bbolt.Open (the freelist). Here
// the file is opened and walked on a goroutine of its own, where a fault
// is a panic (debug.SetPanicOnFault) and every panic is recovered, and
// then bbolt's own consistency check (Tx.Check) runs on the pages the walk
// has proved readable. A corrupt file is an error wrapping ErrCorrupt that
// names it and says how to recover (cure: what moving it aside costs).
//
// Not caught: a branch page pointing back at its ancestor makes bbolt loop;
// garbage forms that only by a very unlucky chance.
func openBolt(ctx context.Context, path string, opts bbolt.Options, cure string) (*bbolt.DB, error) {
	type result struct {
		db  *bbolt.DB
		err error
	}
	done := make(chan result, 1)
	go func() {
		debug.SetPanicOnFault(true)
		var (
			db   *bbolt.DB
			file *os.File
		)
		defer func() {
			if r := recover(); r != nil {
				// bbolt.Open has not returned its DB: close the file so
				// its lock goes with it. Its memory map stays: the process
				// is about to report the error and exit.
				if db != nil {
					db.Close()
				} else if file != nil {
					file.Close()
				}
				done <- result{err: corrupt(path, fmt.Errorf("bbolt: %v", r), cure)}
			}
		}()
		opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
			f, err := os.OpenFile(name, flag, perm)
			file = f
			return f, err
		}
		if opts.Timeout == 0 {
			opts.Timeout = lockTimeout
		}
		// The freelist is read by Open, here, rather than later by
		// Tx.Check on a goroutine of bbolt's where a fault would crash.
		opts.PreLoadFreelist = true
		db, err := bbolt.Open(path, 0o600, &opts)
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			done <- result{err: fmt.Errorf("%s: %w: %w", path, ErrLocked, err)}
			return
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrVersionMismatch),
			err != nil && strings.HasPrefix(err.Error(), "file size too small"): // a truncated file (bbolt has no sentinel for it)
			done <- result{err: corrupt(path, err, cure)}
			return
		case err != nil:
			done <- result{err: fmt.Errorf("%s: %w", path, err)}
			return
		}
		if err := verify(ctx, db); err != nil {
			db.Close()
			if ctx.Err() != nil {
				done <- result{err: fmt.Errorf("%s: check stopped: %w", path, ctx.Err())}
				return
			}
			done <- result{err: corrupt(path, err, cure)}
			return
		}
		done <- result{db: db}
	}()
	r := <-done
	return r.db, r.err
}

// CheckFile checks the bbolt database at path as openBolt does, opened
// read-only and closed again, for a database another library opens
// itself: the embedded broker's (mochi's bolt hook). A missing or empty
// file is no error: bbolt creates it.
func CheckFile(path, cure string) error {
	fi, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) || err == nil && fi.Size() == 0 {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check store: %w", err)
	}
	db, err := openBolt(context.Background(), path, bbolt.Options{ReadOnly: true}, cure)
	if err != nil {
		return fmt.Errorf("check store: %w", err)
	}
	if err := db.Close(); err != nil {
		return fmt.Errorf("check store %s: %w", path, err)
	}
	return nil
}

// corrupt is the error for a corrupt database file: what is wrong, and the
// cure.
func corrupt(path string, why error, cure string) error {
	return fmt.Errorf("%s: %w (%v): stop controllerlite, move the file aside (mv %s %s.corrupt) and start it again: %s",
		path, ErrCorrupt, why, path, path, cure)
}

// maxCheckErrors bounds how many of Tx.Check's findings are reported.
const maxCheckErrors = 3

// verify reads every key and value of every bucket, on the calling
// goroutine (see openBolt), then runs bbolt's consistency check. It stops
// early, with ctx's error, when ctx ends.
func verify(ctx context.Context, db *bbolt.DB) error {
	return db.View(func(tx *bbolt.Tx) error {
		w := walker{ctx: ctx}
		if err := tx.ForEach(func(name []byte, b *bbolt.Bucket) error {
			return w.walk(b)
		}); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		var (
			found []string
			n     int
		)
		for err := range tx.Check() { // drained to the end: Check's goroutine waits on it
			if n++; n <= maxCheckErrors {
				found = append(found, err.Error())
			}
		}
		if n > maxCheckErrors {
			found = append(found, fmt.Sprintf("and %d more problems", n-maxCheckErrors))
		}
		if n > 0 {
			return errors.New(strings.Join(found, "; "))
		}
		return nil
	})
}

// walker reads every page of a file before bbolt trusts it.
type walker struct {
	ctx context.Context
	n   int // entries read, for checking ctx every ctxEvery
	sum uint32
}

// ctxEvery is how many entries the walk reads between looks at its
// context: cheap against crc32 over the entries themselves.
const ctxEvery = 4096

// walk touches every byte of every key and value in b and its nested
// buckets: a page bbolt would read out of bounds faults here, first.
func (w *walker) walk(b *bbolt.Bucket) error {
	return b.ForEach(func(k, v []byte) error {
		if w.n++; w.n%ctxEvery == 0 {
			if err := w.ctx.Err(); err != nil {
				return err
			}
		}
		w.sum = crc32.Update(w.sum, crc32.IEEETable, k)
		if v != nil {
			w.sum = crc32.Update(w.sum, crc32.IEEETable, v)
			return nil
		}
		child := b.Bucket(k)
		if child == nil {
			return fmt.Errorf("key %q: neither a value nor a bucket", k)
		}
		return w.walk(child)
	})
}
