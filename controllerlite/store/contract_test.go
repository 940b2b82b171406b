package store_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/controllerlite/store/storetest"
)

// TestContract runs the tests every store passes (storetest) on the bbolt
// file.
func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) storetest.Opener {
		dir := t.TempDir()
		return func() (storetest.Store, error) { return store.Open(dir) }
	})
}

// TestFileMode: the database file is the controller's alone.
func TestFileMode(t *testing.T) {
	dir := t.TempDir()
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Put(storetest.Sample()...); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file: %v, mode %v", err, fi.Mode())
	}
}
