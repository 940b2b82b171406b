package store

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

// mappedKB is how much of path's memory map is resident in this process,
// from /proc/self/smaps.
func mappedKB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var kb int
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 5 && strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[5] == path
			continue
		}
		if in && len(fields) == 3 && fields[0] == "Rss:" {
			n, err := strconv.Atoi(fields[1])
			if err != nil {
				t.Fatal(err)
			}
			kb += n
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return kb
}

const mappedN, mappedSize = 2000, 2048 // ~4 MB of values

// mappedDB is a bbolt file of ~4 MB of values, and a function that reads
// every value and checks it.
func mappedDB(t *testing.T) (db *bbolt.DB, path string, readAll func() error) {
	t.Helper()
	path = filepath.Join(t.TempDir(), "mapped.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	const n, size = mappedN, mappedSize
	value := func(i int) []byte { return bytes.Repeat([]byte{byte(i)}, size) }
	if err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("b"))
		if err != nil {
			return err
		}
		for i := range n {
			if err := b.Put(fmt.Appendf(nil, "k%05d", i), value(i)); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	readAll = func() error {
		return db.View(func(tx *bbolt.Tx) error {
			b := tx.Bucket([]byte("b"))
			for i := range n {
				if got := b.Get(fmt.Appendf(nil, "k%05d", i)); !bytes.Equal(got, value(i)) {
					return fmt.Errorf("key %d reads %d bytes, not its value", i, len(got))
				}
			}
			return nil
		})
	}
	return db, path, readAll
}

// TestReleaseMapped: the pages a walk of the file made resident are given
// back, and every value reads the same afterwards, from the page cache.
func TestReleaseMapped(t *testing.T) {
	const n, size = mappedN, mappedSize
	db, path, readAll := mappedDB(t)
	if err := readAll(); err != nil {
		t.Fatal(err)
	}
	before := mappedKB(t, path)
	if before < n*size/1024 {
		t.Fatalf("after reading every value %d KB of the map are resident, want at least %d: the test cannot see the map", before, n*size/1024)
	}
	if err := ReleaseMapped(db); err != nil {
		t.Fatal(err)
	}
	if after := mappedKB(t, path); after > before/10 {
		t.Errorf("after ReleaseMapped %d KB of the map are resident (before: %d KB)", after, before)
	}
	if err := readAll(); err != nil {
		t.Fatalf("after ReleaseMapped: %v", err)
	}
	if again := mappedKB(t, path); again < n*size/1024 {
		t.Errorf("reading again made %d KB resident, want the values' %d KB back", again, n*size/1024)
	}
}

// TestMapReleaserAtMostOncePerInterval: the first write releases, one
// right after it does not (a fleet's return commits hundreds of times a
// second).
func TestMapReleaserAtMostOncePerInterval(t *testing.T) {
	const want = mappedN * mappedSize / 1024
	db, path, readAll := mappedDB(t)
	r := NewMapReleaser(db)
	for i, tc := range []struct {
		what     string
		released bool
	}{
		{"the first write", true},
		{"a write right after it", false},
	} {
		if err := readAll(); err != nil {
			t.Fatal(err)
		}
		r.AfterWrite()
		kb := mappedKB(t, path)
		if tc.released && kb >= want/10 || !tc.released && kb < want {
			t.Errorf("%d: after %s %d KB of the map are resident (the values: %d KB); released: want %v", i, tc.what, kb, want, tc.released)
		}
	}
}
