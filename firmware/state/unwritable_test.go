package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// onlyStateFiles fails the test if dir holds anything but the state file,
// the lock and the disk filler: a failed Save must leave no temp file.
func onlyStateFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if n := e.Name(); n != FileName && n != lockName && !strings.HasPrefix(n, "filler-") {
			t.Errorf("stray file %s in the state dir", n)
		}
	}
}

func mustLoad(t *testing.T, s *Store, want protocol.DeviceState) {
	t.Helper()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Load = %+v, want %+v", got.Replica, want.Replica)
	}
}

// TestSaveOnAFullOrReadOnlyDisk: on a full tmpfs and on a bind mount made
// read-only while the store is open, Save fails with the system's reason
// (Unwritable), the old file stays whole, no temp file is left, and Save
// works again once the disk has room or is writable.
func TestSaveOnAFullOrReadOnlyDisk(t *testing.T) {
	for _, tc := range []struct {
		name string
		want syscall.Errno
		// prepare mounts the test's disk on dir and returns how to break
		// it and how to repair it.
		prepare func(t *testing.T, dir string) (breakIt, repair func())
	}{
		{"full tmpfs", syscall.ENOSPC, func(t *testing.T, dir string) (func(), func()) {
			testenv.MountTmpfs(t, dir, 64<<10)
			var filler string
			return func() { filler = testenv.FillDisk(t, dir) },
				func() {
					if err := os.Remove(filler); err != nil {
						t.Fatal(err)
					}
				}
		}},
		{"read-only bind mount", syscall.EROFS, func(t *testing.T, dir string) (func(), func()) {
			// The store holds its lock while the mount turns read-only:
			// a lock open for writing would make the remount fail (busy).
			setRO := testenv.BindMount(t, t.TempDir(), dir)
			return func() { setRO(true) }, func() { setRO(false) }
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			breakIt, repair := tc.prepare(t, dir)
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			old, next := sample(), sample()
			next.Replica.VC[protocol.DeviceIdx]++
			if err := s.Save(old); err != nil {
				t.Fatal(err)
			}

			breakIt()
			err = s.Save(next)
			if !errors.Is(err, tc.want) || !Unwritable(err) {
				t.Fatalf("Save on the broken disk = %v, want %v", err, tc.want)
			}
			mustLoad(t, s, old)
			onlyStateFiles(t, dir)

			repair()
			if err := s.Save(next); err != nil {
				t.Fatalf("Save after the repair: %v", err)
			}
			mustLoad(t, s, next)
			onlyStateFiles(t, dir)
		})
	}
}

// TestOpenReadOnlyDirectory: a read-only state directory does not stop
// Open (the thermostat must run on what it has): Load reads what is there,
// Save fails with EROFS, and once the directory is writable Save works and
// holds the lock against a second process.
func TestOpenReadOnlyDirectory(t *testing.T) {
	for _, tc := range []struct {
		name  string
		saved bool   // the directory holds a state and its lock
		sub   string // the state directory inside the mount ("" for the mount itself)
	}{
		{"used before", true, ""},
		{"empty", false, ""},
		{"missing", false, "state"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mnt := filepath.Join(t.TempDir(), "mnt")
			setRO := testenv.BindMount(t, t.TempDir(), mnt)
			dir := filepath.Join(mnt, tc.sub)
			if tc.saved {
				s, err := Open(dir)
				if err != nil {
					t.Fatal(err)
				}
				if err := s.Save(sample()); err != nil {
					t.Fatal(err)
				}
				s.Close()
			}
			setRO(true)

			s, err := Open(dir)
			if err != nil {
				t.Fatalf("Open of a read-only directory: %v", err)
			}
			defer s.Close()
			if tc.saved {
				mustLoad(t, s, sample())
			} else if _, err := s.Load(); !errors.Is(err, ErrNoState) {
				t.Fatalf("Load = %v, want ErrNoState", err)
			}
			if err := s.Save(sample()); !errors.Is(err, syscall.EROFS) {
				t.Fatalf("Save on a read-only directory = %v, want EROFS", err)
			}
			if tc.saved {
				// Locked read-only from the start.
				if _, err := Open(dir); !errors.Is(err, ErrLocked) {
					t.Fatalf("second Open = %v, want ErrLocked", err)
				}
			}

			setRO(false)
			next := sample()
			next.Replica.VC[protocol.DeviceIdx]++
			if err := s.Save(next); err != nil {
				t.Fatalf("Save once writable: %v", err)
			}
			mustLoad(t, s, next)
			if _, err := Open(dir); !errors.Is(err, ErrLocked) {
				t.Fatalf("second Open after the first Save = %v, want ErrLocked", err)
			}
		})
	}
}
