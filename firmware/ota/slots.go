// Package ota installs signed releases on a board and keeps it bootable:
// two slots for binaries in the state directory, a small record of which
// runs (slots.json), the launcher that starts the right one, and the trial
// that a new version must pass before it is kept.
//
// Layout in the state directory (the same one the sync state lives in, so
// both versions read the same clock and properties):
//
//	slots.json          {"active":"a","trial":{...},"previous":"", ...}
//	slots.lock          serialises updates of slots.json
//	slots/a/thermostat  a release binary
//	slots/b/thermostat  the other
//
// "active" is the last version known good ("" is the packaged binary,
// /usr/bin/thermostat); "trial" is a newly installed slot on probation.
// The packaged binary is always the launcher: systemd starts it, it reads
// slots.json and runs the trial slot (as its child, so it can enforce the
// deadline) or execs the active slot, or runs itself.
package ota

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
)

// Names in the state directory.
const (
	slotsFile = "slots.json"
	slotsLock = "slots.lock"
	slotsDir  = "slots"
	// BinaryName is the file of a slot's binary.
	BinaryName = "thermostat"
)

// The two slots.
const (
	SlotA = "a"
	SlotB = "b"
	// Packaged names the binary the service manager starts, in reports.
	Packaged = "packaged"
)

// EnvSlot is set to the slot's name in the environment of a slot binary the
// launcher starts; the packaged binary runs without it.
const EnvSlot = "THERMOSTAT_SLOT"

// Defaults of a trial.
const (
	DefaultTrialDeadline = 3 * time.Minute
	DefaultTrialAttempts = 3
)

// State is slots.json.
type State struct {
	// Active is the slot that runs when no trial is on: the last version
	// proven healthy, "" for the packaged binary.
	Active string `json:"active"`
	// Previous is the slot that was active before Active, "" for the
	// packaged binary; kept for the report.
	Previous string `json:"previous"`
	// Slots describes what each slot holds.
	Slots map[string]SlotInfo `json:"slots,omitempty"`
	// Trial is the slot on probation, nil when none.
	Trial *Trial `json:"trial,omitempty"`
	// LastRollback is the latest trial that failed.
	LastRollback *Rollback `json:"last_rollback,omitempty"`
	// LastCommit is the latest trial that proved healthy.
	LastCommit *Commit `json:"last_commit,omitempty"`
}

// SlotInfo is one slot's binary.
type SlotInfo struct {
	Version   string    `json:"version"`
	SHA256    string    `json:"sha256"`
	Installed time.Time `json:"installed"`
}

// Trial is a newly installed slot that must prove itself.
type Trial struct {
	Slot    string `json:"slot"`
	Version string `json:"version"`
	// From is the version that ran when it was installed.
	From string `json:"from"`
	// Attempts counts the starts so far; after MaxAttempts starts without
	// proving health the trial fails.
	Attempts    int `json:"attempts"`
	MaxAttempts int `json:"max_attempts"`
	// DeadlineSec is how long each start has to prove health.
	DeadlineSec int `json:"deadline_s"`
	// LastFailure says how the latest attempt ended, if it did.
	LastFailure string `json:"last_failure,omitempty"`
}

// Deadline is the trial's deadline as a duration.
func (t *Trial) Deadline() time.Duration { return time.Duration(t.DeadlineSec) * time.Second }

// Rollback records a failed trial.
type Rollback struct {
	Version string    `json:"version"`
	Reason  string    `json:"reason"`
	At      time.Time `json:"at"`
	// Reported is set once a running version reported it to the controller.
	Reported bool `json:"reported,omitempty"`
}

// Commit records a trial that proved healthy.
type Commit struct {
	Version  string    `json:"version"`
	At       time.Time `json:"at"`
	Reported bool      `json:"reported,omitempty"`
}

// Other is the slot that is not s: where the next release goes.
func Other(s string) string {
	if s == SlotA {
		return SlotB
	}
	return SlotA
}

// BinaryPath is slot's binary in the state directory dir.
func BinaryPath(dir, slot string) string { return filepath.Join(dir, slotsDir, slot, BinaryName) }

// Load reads slots.json in dir; a missing file is the empty State (only
// the packaged binary).
func Load(dir string) (State, error) {
	var st State
	data, err := os.ReadFile(filepath.Join(dir, slotsFile))
	if errors.Is(err, fs.ErrNotExist) {
		return st, nil
	}
	if err != nil {
		return st, fmt.Errorf("slots: %w", err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, fmt.Errorf("slots: %s: %w (remove it to run the packaged binary)", filepath.Join(dir, slotsFile), err)
	}
	for _, s := range []string{st.Active, st.Previous} {
		if s != "" && s != SlotA && s != SlotB {
			return st, fmt.Errorf("slots: %s names slot %q", filepath.Join(dir, slotsFile), s)
		}
	}
	if st.Trial != nil && st.Trial.Slot != SlotA && st.Trial.Slot != SlotB {
		return st, fmt.Errorf("slots: %s: trial of slot %q", filepath.Join(dir, slotsFile), st.Trial.Slot)
	}
	return st, nil
}

// Update changes slots.json in dir under its lock: f gets the current
// State and changes it; nothing is written when f fails. The write is
// atomic, so a power cut leaves the old record or the new, never half.
func Update(dir string, f func(*State) error) (State, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return State{}, fmt.Errorf("slots: %w", err)
	}
	lock, err := os.OpenFile(filepath.Join(dir, slotsLock), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return State{}, fmt.Errorf("slots: %w", err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return State{}, fmt.Errorf("slots: lock: %w", err)
	}
	st, err := Load(dir)
	if err != nil {
		return st, err
	}
	if err := f(&st); err != nil {
		return st, err
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return st, err
	}
	if err := atomicfile.WriteFile(filepath.Join(dir, slotsFile), append(data, '\n'), 0o600); err != nil {
		return st, fmt.Errorf("slots: %w", err)
	}
	return st, nil
}

// Running describes the slot this process runs from: EnvSlot, or
// Packaged.
func Running() string {
	if s := os.Getenv(EnvSlot); s == SlotA || s == SlotB {
		return s
	}
	return Packaged
}

// rollback ends st's trial as failed for reason: Active stays the version
// that ran before it.
func (st *State) rollback(reason string, now time.Time) {
	if st.Trial == nil {
		return
	}
	st.LastRollback = &Rollback{Version: st.Trial.Version, Reason: reason, At: now.UTC()}
	st.Trial = nil
}

// Commit makes slot, on trial, the active slot: it proved healthy. It is
// a no-op (false) unless slot is the slot on trial.
func CommitTrial(dir, slot string, now time.Time) (bool, error) {
	done := false
	_, err := Update(dir, func(st *State) error {
		if st.Trial == nil || st.Trial.Slot != slot {
			return errNoChange
		}
		st.Previous, st.Active = st.Active, slot
		st.LastCommit = &Commit{Version: st.Trial.Version, At: now.UTC()}
		st.Trial = nil
		done = true
		return nil
	})
	if errors.Is(err, errNoChange) {
		err = nil
	}
	return done, err
}

// errNoChange makes Update write nothing.
var errNoChange = errors.New("no change")

// Describe says in one or two lines which binary the launcher runs for
// st, the packaged binary being packagedVersion.
func Describe(st State, packagedVersion string) string {
	s := fmt.Sprintf("runs: the packaged binary (%s)", packagedVersion)
	if st.Active != "" {
		s = fmt.Sprintf("runs: slot %s (%s), active", st.Active, st.Slots[st.Active].Version)
	}
	if t := st.Trial; t != nil {
		s = fmt.Sprintf("runs: slot %s (%s) on trial, start %d of %d; before it: %s", t.Slot, t.Version, t.Attempts, t.MaxAttempts, slotName(st.Active, st))
	}
	if rb := st.LastRollback; rb != nil {
		s += fmt.Sprintf("\nlast rollback: %s at %s: %s", rb.Version, rb.At.Format(time.RFC3339), rb.Reason)
	}
	return s
}

func slotName(slot string, st State) string {
	if slot == "" {
		return "the packaged binary"
	}
	return fmt.Sprintf("slot %s (%s)", slot, st.Slots[slot].Version)
}
