// Package store keeps what controllerlite knows about each device in an
// embedded bbolt database inside its data directory: the protocol replica
// (clock, properties and their write stamps), whether a Command is still
// owed to the broker, and the latest status, telemetry and time seen.
//
// Every Put is one bbolt transaction, fsynced before it returns, so a record
// that Put accepted survives kill -9 and power loss. The controller writes a
// replica here before it publishes the Command that depends on it; that is
// what keeps its clock from ever going backwards across a crash.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/protocol"
)

// FileName is the database file inside the data directory. The embedded
// broker keeps its own store elsewhere, so wiping one does not wipe the other.
const FileName = "controller.db"

// schemaVersion is written in the meta bucket; a database written by a
// newer, incompatible controllerlite is refused rather than misread.
const schemaVersion = "1"

var (
	bucketMeta    = []byte("meta")
	bucketDevices = []byte("devices")
	keyVersion    = []byte("version")
)

// Device is one device's stored record.
type Device struct {
	ID string `json:"id"`
	// Replica is the controller's replica for this device.
	Replica *protocol.Replica `json:"replica"`
	// Owed is set while a Command computed from Replica has not been
	// handed to the broker: it is written true before publishing and false
	// after, so a crash or an outage in between sends it on the next start
	// or reconnect.
	Owed bool `json:"owed,omitempty"`
	// Online is the device's latest status.
	Online bool `json:"online"`
	// LastSeen is when a live message last came from the device; zero if
	// never.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Telemetry is the latest telemetry payload, re-encoded from its
	// validated form; nil if none has arrived.
	Telemetry json.RawMessage `json:"telemetry,omitempty"`
	// Reported are the alerts the device's latest telemetry carried, each
	// since the controller first saw it; Raised those the controller
	// raised itself (duplicate_identity, tls_refused). Kept apart so a
	// telemetry payload clears only what the device reported.
	Reported []protocol.Alert `json:"reported,omitempty"`
	Raised   []protocol.Alert `json:"raised,omitempty"`
	// Firmware is the firmware version the device last reported (status
	// or telemetry), "" if it never did.
	Firmware string `json:"firmware,omitempty"`
}

// Store is an open database. It is safe for concurrent use, though the
// controller writes from one goroutine.
type Store struct {
	db      *bbolt.DB
	path    string
	release *MapReleaser
}

// Open opens (creating if needed) the database in dir, which is created
// 0700 if missing. It fails after two seconds if another process holds the
// database, with an error that says so (ErrLocked), and with ErrCorrupt,
// naming the file and the cure, if any page of it is garbage: every page
// is read and checked here, so a corrupt file cannot panic later.
func Open(dir string) (*Store, error) {
	if dir == "" {
		return nil, errors.New("open store: no data directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("open store: create data directory: %w", err)
	}
	path := filepath.Join(dir, FileName)
	db, err := OpenVersioned(context.Background(), path, CureController, schemaVersion, bucketDevices)
	if err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	return &Store{db: db, path: path, release: NewMapReleaser(db)}, nil
}

// Path is the database file.
func (s *Store) Path() string { return s.path }

// Close closes the database.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Put writes records in one transaction: all of them are stored, or none.
func (s *Store) Put(devs ...Device) error {
	if len(devs) == 0 {
		return nil
	}
	vals := make([][]byte, len(devs))
	for i, d := range devs {
		if err := Check(d); err != nil {
			return fmt.Errorf("store put: %w", err)
		}
		b, err := json.Marshal(d)
		if err != nil {
			return fmt.Errorf("store put %s: %w", d.ID, err)
		}
		vals[i] = b
	}
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		for i, d := range devs {
			if err := b.Put([]byte(d.ID), vals[i]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store put: %w", err)
	}
	s.release.AfterWrite()
	return nil
}

// Load returns every stored record, sorted by id. A record that does not
// hold a valid replica is an error naming the device: the controller must
// not resume from a clock it cannot trust.
func (s *Store) Load() ([]Device, error) {
	var devs []Device
	err := s.db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(k, v []byte) error {
			var d Device
			if err := json.Unmarshal(v, &d); err != nil {
				return fmt.Errorf("device %q: %w", k, err)
			}
			if d.ID != string(k) {
				return fmt.Errorf("device %q: record says id %q", k, d.ID)
			}
			if err := Check(d); err != nil {
				return err
			}
			if err := Normalize(d.Replica); err != nil {
				return fmt.Errorf("device %q: %w", k, err)
			}
			devs = append(devs, d)
			return nil
		})
	})
	if err != nil {
		// bbolt found the pages sound (Open checked them); the record
		// inside is not, and the same cure applies.
		return nil, fmt.Errorf("load store: %w", corrupt(s.path, err, CureController))
	}
	slices.SortFunc(devs, func(a, b Device) int {
		switch {
		case a.ID < b.ID:
			return -1
		case a.ID > b.ID:
			return 1
		}
		return 0
	})
	return devs, nil
}

// Check is what every store refuses to write, and to read back: a record
// whose id is no device id, or that has no replica.
func Check(d Device) error {
	if err := protocol.CheckDeviceID(d.ID); err != nil {
		return err
	}
	if d.Replica == nil {
		return fmt.Errorf("device %q: no replica", d.ID)
	}
	return nil
}

// Normalize puts property values read back from JSON in canonical form and
// checks them as a received message's would be: every store applies it to
// what it reads, so that a controller never resumes from a clock it cannot
// trust.
func Normalize(r *protocol.Replica) error {
	r.Side = protocol.ControllerSide
	if r.Props == nil {
		r.Props = protocol.Props{}
	}
	for name, p := range r.Props {
		v, err := protocol.Normalize(name, p.Val)
		if err != nil {
			return fmt.Errorf("stored property: %w", err)
		}
		if !p.W.LessEq(r.VC) {
			return fmt.Errorf("stored property %s: stamp %v is beyond the clock %v", name, p.W, r.VC)
		}
		r.Props[name] = protocol.Prop{Val: v, W: p.W}
	}
	return r.Validate()
}
