//go:build unix

package testenv

import (
	"os"
	"syscall"
	"testing"
)

// HoldFileLock takes the exclusive flock bbolt takes on the file at path,
// as another process holding the database would: an open of it then
// waits (bbolt polls its lock up to its Timeout). release gives the lock
// back; the test's end does too.
func HoldFileLock(t testing.TB, path string) (release func()) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("testenv: lock %s: %v", path, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		t.Fatalf("testenv: lock %s: %v", path, err)
	}
	released := false
	release = func() {
		if !released {
			released = true
			f.Close() // the lock goes with the file
		}
	}
	t.Cleanup(release)
	return release
}
