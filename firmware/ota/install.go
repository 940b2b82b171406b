package ota

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/thermofleet/thermo/release"
)

// ErrTrialPending: a release is on trial; another waits until it is
// committed or rolled back.
var ErrTrialPending = errors.New("a release is on trial")

// InstallOptions tune the trial an install starts.
type InstallOptions struct {
	// Running is the version running now (the trial's From).
	Running string
	// Deadline each start of the new version has to prove healthy;
	// DefaultTrialDeadline when 0.
	Deadline time.Duration
	// Attempts: starts without proving health before it is rolled back;
	// DefaultTrialAttempts when 0.
	Attempts int
}

// Install moves the binary at src, which the caller verified against m
// (signature, checks, size and hash), into the slot that is not active
// and puts it on trial. src must be in the state directory's file system
// (the download directory is), so the move is a rename: a power cut
// leaves the old slot binary or the new one. The next start of the
// launcher runs the new version. It returns the slot.
func Install(dir string, m release.Manifest, src string, o InstallOptions) (string, error) {
	if o.Deadline <= 0 {
		o.Deadline = DefaultTrialDeadline
	}
	if o.Attempts <= 0 {
		o.Attempts = DefaultTrialAttempts
	}
	var slot string
	_, err := Update(dir, func(st *State) error {
		if st.Trial != nil {
			return fmt.Errorf("%w: %s in slot %s", ErrTrialPending, st.Trial.Version, st.Trial.Slot)
		}
		slot = SlotA
		if st.Active != "" {
			slot = Other(st.Active)
		}
		bin := BinaryPath(dir, slot)
		if err := os.MkdirAll(filepath.Dir(bin), 0o700); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if err := os.Chmod(src, 0o700); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if err := os.Rename(src, bin); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if err := syncDir(filepath.Dir(bin)); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		// The rename is durable before slots.json names the slot: the
		// record never points at a binary a power cut took away.
		if err := release.CheckFile(m, bin); err != nil {
			return fmt.Errorf("install: %w", err)
		}
		if st.Slots == nil {
			st.Slots = map[string]SlotInfo{}
		}
		st.Slots[slot] = SlotInfo{Version: m.Version, SHA256: m.SHA256, Installed: time.Now().UTC()}
		st.Trial = &Trial{Slot: slot, Version: m.Version, From: o.Running, MaxAttempts: o.Attempts, DeadlineSec: int(o.Deadline.Round(time.Second) / time.Second)}
		return nil
	})
	return slot, err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
