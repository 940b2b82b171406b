// Package state keeps a thermostat's sync state (its vector clock, its
// stamped properties, and whether it is rejoining with writes pending) in a
// state directory, written atomically before any message that depends on it
// is sent.
//
// The file is the device's memory of which clock values it has already used.
// Losing it silently would make the device reuse them, and the controller
// would then take its next writes for duplicates. So a file that cannot be
// read is an error that stops the firmware, with instructions, never a
// reason to start fresh; and a state directory with no file at all is a
// first boot, after which the device rejoins as PROTOCOL.md describes.
//
// Only one process may use a state directory at a time: Open takes an
// exclusive lock on it, which the kernel releases when the process dies.
//
// A state directory that cannot be written (full, read-only, no
// permission) is not a reason to stop: the thermostat keeps heating on
// what it last saved, and its agent refuses what it cannot save. So Open
// succeeds on such a directory, Load reads what is there, and Save returns
// the error (Unwritable tells these errors apart) and leaves the old file
// intact, until the directory can be written again.
package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/protocol"
)

// FileName is the state file inside the state directory.
const FileName = "state.json"

// lockName is the lock file inside the state directory.
const lockName = "lock"

// tmpPrefix starts the name of a temporary file being written; leftovers
// of a crash are removed by Open.
var tmpPrefix = atomicfile.TempPrefix(FileName)

// Format is the version of the file layout written by Save.
const Format = 1

// ErrNoState is returned by Load when the directory holds no state file: a
// first boot, or a state directory that was wiped on purpose.
var ErrNoState = errors.New("no stored state")

// ErrCorrupt is wrapped by Load's error for a state file that exists but
// cannot be used.
var ErrCorrupt = errors.New("state file is corrupt")

// ErrLocked is wrapped by Open's error when another process holds the
// state directory.
var ErrLocked = errors.New("state directory in use by another process")

// file is the JSON layout of the state file.
type file struct {
	Format int                  `json:"format"`
	Device protocol.DeviceState `json:"device"`
}

// Store is an open state directory. Its methods are not safe for
// concurrent use: the firmware's agent goroutine owns it.
type Store struct {
	dir  string
	lock *os.File
}

// Open creates dir (0700) if needed, locks it against other processes and
// removes temporary files left by a crash in the middle of a Save.
//
// A directory that cannot be written does not fail Open (see the package
// comment). Where even the lock file cannot be created there (a read-only
// directory never used before), the store starts unlocked and Save takes
// the lock before it writes anything.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open state: no state directory given")
	}
	s := &Store{dir: dir}
	if err := s.takeLock(); err != nil && (errors.Is(err, ErrLocked) || !Unwritable(err)) {
		return nil, err
	}
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		s.Close()
		return nil, fmt.Errorf("open state: %w", err)
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), tmpPrefix) {
			// A Save that never reached its rename: the old file stands.
			// On a read-only directory it stays, harmless, until the next
			// Open that can remove it.
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
	return s, nil
}

// takeLock creates the directory and the lock file if needed and locks
// it. The lock file is opened read-only: flock needs only a descriptor,
// and one open for writing would keep the file system from being
// remounted read-only while the thermostat runs.
func (s *Store) takeLock() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("open state: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(s.dir, lockName), os.O_CREATE|os.O_RDONLY, 0o600)
	if err != nil {
		return fmt.Errorf("open state: %w", err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return fmt.Errorf("open state %s: %w (is another thermostat running with this --state-dir?)", s.dir, ErrLocked)
		}
		return fmt.Errorf("open state %s: lock: %w", s.dir, err)
	}
	s.lock = lock
	return nil
}

// Unwritable reports whether err means the state directory cannot be
// written now (full, read-only, over quota, no permission): a condition a
// person can fix while the thermostat runs, as opposed to a corrupt file
// or a directory another process holds.
func Unwritable(err error) bool {
	for _, e := range []error{syscall.ENOSPC, syscall.EDQUOT, syscall.EROFS, syscall.EACCES, syscall.EPERM} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Dir is the state directory.
func (s *Store) Dir() string { return s.dir }

// Path is the state file.
func (s *Store) Path() string { return filepath.Join(s.dir, FileName) }

// Close releases the lock.
func (s *Store) Close() error {
	if s.lock == nil {
		return nil
	}
	err := s.lock.Close()
	s.lock = nil
	return err
}

// Load reads the stored state. It returns ErrNoState when there is none,
// and an error wrapping ErrCorrupt, saying how to reset, when the file
// cannot be used.
func (s *Store) Load() (protocol.DeviceState, error) {
	data, err := os.ReadFile(s.Path())
	if errors.Is(err, fs.ErrNotExist) {
		return protocol.DeviceState{}, ErrNoState
	}
	if err != nil {
		return protocol.DeviceState{}, fmt.Errorf("load state: %w", err)
	}
	st, err := Decode(data)
	if err != nil {
		return protocol.DeviceState{}, fmt.Errorf("load state %s: %w: %w\n"+
			"The device will not start from a fresh state on its own: it would reuse clock values the controller has already seen.\n"+
			"To reset it, move the file away (mv %s %s.bad) and start again; the device then rejoins the controller as PROTOCOL.md describes.",
			s.Path(), ErrCorrupt, err, s.Path(), s.Path())
	}
	return st, nil
}

// Decode parses and checks the contents of a state file.
func Decode(data []byte) (protocol.DeviceState, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f file
	if err := dec.Decode(&f); err != nil {
		return protocol.DeviceState{}, fmt.Errorf("not a state file: %v", err)
	}
	if dec.More() {
		return protocol.DeviceState{}, errors.New("data after the state object")
	}
	if f.Format != Format {
		return protocol.DeviceState{}, fmt.Errorf("format %d, this firmware reads format %d", f.Format, Format)
	}
	if err := check(f.Device); err != nil {
		return protocol.DeviceState{}, err
	}
	return f.Device, nil
}

// check refuses state the protocol could not have produced, so a damaged
// file is not mistaken for a valid one.
func check(st protocol.DeviceState) error {
	r := st.Replica
	if r == nil {
		return errors.New("no replica")
	}
	if r.Side != protocol.DeviceSide {
		return fmt.Errorf("replica side %v, want device", r.Side)
	}
	if err := r.Validate(); err != nil {
		return err
	}
	if len(st.Pending) > 0 && !st.Rejoining {
		return errors.New("pending writes outside a rejoin")
	}
	for name, v := range st.Pending {
		if _, err := protocol.Normalize(name, v); err != nil {
			return fmt.Errorf("pending %s: %v", name, err)
		}
	}
	return nil
}

// Encode renders state as the contents of a state file.
func Encode(st protocol.DeviceState) ([]byte, error) {
	if err := check(st); err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	b, err := json.MarshalIndent(file{Format: Format, Device: st}, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode state: %w", err)
	}
	return append(b, '\n'), nil
}

// Save replaces the state file atomically: a temporary file is written and
// synced, renamed over the old one, and the directory is synced, so after a
// crash at any moment the file holds either the old or the new state, and
// once Save returns the new state survives a power cut. A Save that fails
// (a full or read-only disk) leaves the old file as it was and no
// temporary file behind.
func (s *Store) Save(st protocol.DeviceState) error {
	data, err := Encode(st)
	if err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	if s.lock == nil {
		// Open could not create the lock file: the directory is writable
		// now only if this succeeds.
		if err := s.takeLock(); err != nil {
			return fmt.Errorf("save state: %w", err)
		}
	}
	if err := atomicfile.WriteFile(filepath.Join(s.dir, FileName), data, 0o600); err != nil {
		return fmt.Errorf("save state: %w", err)
	}
	return nil
}
