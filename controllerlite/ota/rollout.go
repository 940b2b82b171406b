// Package ota is the controller's side of over-the-air updates: it serves
// release binaries from the releases directory over HTTPS to devices that
// present a fleet certificate, and runs a staged rollout: it offers the
// release on each chosen device's own ota topic, hears each device's
// state, and pauses itself when a device rolls back.
//
// The controller is not trusted with the release: it never holds the
// release key, and devices check the manifest's signature themselves. It
// checks only that the manifest names a binary it has, of that size and
// hash, so a typo fails at `ota rollout`, not on every board.
package ota

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/release"
)

// StateFile is the rollout's record in the controller's data directory.
const StateFile = "ota.json"

// Publisher publishes to the broker (the fleet's link).
type Publisher interface {
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
}

// Rollout is the release being rolled out, as stored.
type Rollout struct {
	// Manifest is the signed manifest file, as `release sign` wrote it.
	Manifest json.RawMessage `json:"manifest"`
	Version  string          `json:"version"`
	Binary   string          `json:"binary"`
	// Percent of the fleet is offered the release: the devices whose
	// Bucket is below Percent*100.
	Percent float64 `json:"percent"`
	Paused  bool    `json:"paused"`
	// PauseReason says who or what paused it.
	PauseReason string    `json:"pause_reason,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
}

// DeviceStatus is one device's line of `ota status`.
type DeviceStatus struct {
	ID string `json:"id"`
	// Included: the rollout's percentage covers this device.
	Included bool `json:"included"`
	// State is the device's report about the rollout's release:
	// offered, downloading, installed, healthy, rolled_back, refused,
	// failed; "pending" while included without a report yet, "" when not
	// included.
	State   string `json:"state"`
	Running string `json:"running,omitempty"`
	Slot    string `json:"slot,omitempty"`
	Code    string `json:"code,omitempty"`
	Reason  string `json:"reason,omitempty"`
}

// Status is `ota status`.
type Status struct {
	Rollout *Rollout       `json:"rollout"`
	Devices []DeviceStatus `json:"devices"`
}

// Options configure a Manager.
type Options struct {
	// DataDir holds StateFile; ReleasesDir the binaries and manifests.
	DataDir, ReleasesDir string
	Root                 string
	// Port and Path prefix of the release server, for offers: devices
	// fetch https://<their broker's host>:Port/releases/BINARY, or
	// BaseURL/releases/BINARY when BaseURL is set.
	Port    int
	BaseURL string
	// Devices lists the fleet's device ids.
	Devices func() []string
	Log     *slog.Logger
	Now     func() time.Time
}

// Manager runs the rollout. Its methods are safe for concurrent use.
type Manager struct {
	o Options

	mu        sync.Mutex
	r         *Rollout
	reports   map[string]protocol.OTAState
	offered   map[string]string // device -> version of the offer published ("" withdrawn)
	pub       Publisher
	wake      chan struct{}
	lastError error
}

// Errors of Start.
var (
	ErrNoRollout = errors.New("no rollout")
	ErrBadInput  = errors.New("bad rollout")
)

// New loads the stored rollout, if any.
func New(o Options) (*Manager, error) {
	if o.Log == nil {
		o.Log = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Root == "" {
		o.Root = protocol.DefaultRoot
	}
	m := &Manager{o: o, reports: map[string]protocol.OTAState{}, offered: map[string]string{}, wake: make(chan struct{}, 1)}
	data, err := os.ReadFile(filepath.Join(o.DataDir, StateFile))
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("ota: %w", err)
	default:
		var r Rollout
		if err := json.Unmarshal(data, &r); err != nil {
			return nil, fmt.Errorf("ota: %s: %w", filepath.Join(o.DataDir, StateFile), err)
		}
		m.r = &r
	}
	return m, nil
}

// Bucket places a device id in 0..9999, stably: a rollout at p percent
// includes the devices below p*100, so every device of a 10% stage is in
// the 50% stage too, and the same devices go first in every rollout.
func Bucket(id string) int {
	sum := sha256.Sum256([]byte("thermofleet rollout\n" + id))
	return int(binary.BigEndian.Uint64(sum[:8]) % 10000)
}

// included is the set of ids a rollout at percent covers: those below the
// threshold, and at least the lowest when percent > 0, so a small fleet's
// first stage is never empty (that device is the lowest at every stage,
// so the stages still nest).
func included(ids []string, percent float64) map[string]bool {
	in := map[string]bool{}
	if percent <= 0 || len(ids) == 0 {
		return in
	}
	lowest := ids[0]
	for _, id := range ids {
		if float64(Bucket(id)) < percent*100 {
			in[id] = true
		}
		if Bucket(id) < Bucket(lowest) {
			lowest = id
		}
	}
	in[lowest] = true
	return in
}

// Start begins a rollout of the manifest file data at percent, or
// changes the percentage of (and resumes) the rollout of the same release.
func (m *Manager) Start(data []byte, percent float64) (Rollout, error) {
	if percent <= 0 || percent > 100 {
		return Rollout{}, fmt.Errorf("%w: --percent %v: give 0 < percent <= 100", ErrBadInput, percent)
	}
	f, err := release.Parse(data)
	if err != nil {
		return Rollout{}, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	mf := f.Manifest
	bin := filepath.Join(m.o.ReleasesDir, mf.Binary)
	if err := release.CheckFile(mf, bin); err != nil {
		return Rollout{}, fmt.Errorf("%w: the releases directory's %s does not match the manifest: %w (copy the binary and its manifest into --releases-dir)", ErrBadInput, mf.Binary, err)
	}
	if !m.o.Now().Before(mf.Expires) {
		return Rollout{}, fmt.Errorf("%w: the manifest expired at %s: sign the release again", ErrBadInput, mf.Expires.Format(time.RFC3339))
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.o.Now().UTC()
	r := Rollout{Manifest: json.RawMessage(compact(data)), Version: mf.Version, Binary: mf.Binary, Percent: percent, Started: now, Updated: now}
	if m.r != nil && m.r.Version == mf.Version && m.r.Binary == mf.Binary {
		r.Started = m.r.Started
	} else {
		m.offered = map[string]string{}
	}
	if err := m.save(&r); err != nil {
		return Rollout{}, err
	}
	m.r = &r
	m.o.Log.Info("ota rollout", "version", r.Version, "binary", r.Binary, "percent", percent)
	m.kick()
	return r, nil
}

// compact returns data without insignificant white space: the offer
// carries the manifest inside an MQTT payload of at most 4096 bytes.
func compact(data []byte) []byte {
	var b bytes.Buffer
	if err := json.Compact(&b, data); err != nil {
		return data // Parse accepted it: cannot happen
	}
	return b.Bytes()
}

// Pause stops offering the release: offers not yet taken up (no download
// begun) are withdrawn; devices that installed it keep it.
func (m *Manager) Pause(reason string) (Rollout, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pause(reason)
}

func (m *Manager) pause(reason string) (Rollout, error) {
	if m.r == nil {
		return Rollout{}, ErrNoRollout
	}
	r := *m.r
	r.Paused, r.PauseReason, r.Updated = true, reason, m.o.Now().UTC()
	if err := m.save(&r); err != nil {
		return Rollout{}, err
	}
	m.r = &r
	m.o.Log.Warn("ota rollout paused", "version", r.Version, "reason", reason)
	m.kick()
	return r, nil
}

func (m *Manager) save(r *Rollout) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.WriteFile(filepath.Join(m.o.DataDir, StateFile), append(b, '\n'), 0o600); err != nil {
		return fmt.Errorf("ota: %w", err)
	}
	return nil
}

// Status is the rollout and every device's state.
func (m *Manager) Status() Status {
	ids := m.o.Devices()
	m.mu.Lock()
	defer m.mu.Unlock()
	for id := range m.reports {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	st := Status{Devices: []DeviceStatus{}}
	var in map[string]bool
	if m.r != nil {
		r := *m.r
		st.Rollout = &r
		in = included(ids, r.Percent)
	}
	for _, id := range ids {
		d := DeviceStatus{ID: id, Included: in[id]}
		rep, ok := m.reports[id]
		if ok {
			d.Running, d.Slot = rep.Running, rep.Slot
		}
		switch {
		case m.r != nil && ok && rep.Release == m.r.Version:
			d.State, d.Code, d.Reason = rep.State, rep.Code, rep.Reason
		case m.r != nil && ok && rep.Running == m.r.Version:
			d.State = protocol.OTAHealthy
		case d.Included:
			d.State = "pending"
		}
		st.Devices = append(st.Devices, d)
	}
	return st
}

// Receive takes a message on a device's ota_state topic.
func (m *Manager) Receive(topic string, payload []byte) {
	id, kind, err := protocol.ParseTopic(m.o.Root, topic)
	if err != nil || kind != protocol.KindOTAState {
		return
	}
	if len(payload) == 0 {
		return
	}
	s, err := protocol.DecodeOTAState(payload)
	if err != nil {
		m.o.Log.Warn("ota state rejected", "device", id, "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.reports[id] = s
	if m.r != nil && !m.r.Paused && s.State == protocol.OTARolledBack && s.Release == m.r.Version {
		if _, err := m.pause(fmt.Sprintf("device %s rolled back %s: %s", id, s.Release, s.Reason)); err != nil {
			m.o.Log.Error("ota: pausing the rollout", "err", err)
		}
	}
}

// LinkUp gives the manager the broker link; offers are (re)published.
func (m *Manager) LinkUp(p Publisher) {
	m.mu.Lock()
	m.pub = p
	m.offered = map[string]string{}
	m.mu.Unlock()
	m.kick()
}

// Kick asks Run to compare the offers with the rollout (a device joined).
func (m *Manager) Kick() { m.kick() }

func (m *Manager) kick() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// Run publishes and withdraws offers as the rollout and the fleet change,
// until ctx is done.
func (m *Manager) Run(ctx context.Context) {
	retry := time.NewTicker(5 * time.Second)
	defer retry.Stop()
	for {
		m.sync(ctx)
		select {
		case <-ctx.Done():
			return
		case <-m.wake:
		case <-retry.C:
		}
	}
}

// sync brings the published offers in line with the rollout.
func (m *Manager) sync(ctx context.Context) {
	ids := m.o.Devices()
	m.mu.Lock()
	pub, r := m.pub, m.r
	var want map[string]string // device -> version to offer ("" withdraw)
	var offer []byte
	if pub != nil && r != nil {
		in := included(ids, r.Percent)
		want = map[string]string{}
		for _, id := range ids {
			switch {
			case r.Paused && in[id] && !m.tookUp(id, r.Version):
				want[id] = "" // withdraw what was not taken up
			case !r.Paused && in[id]:
				want[id] = r.Version
			}
		}
		var err error
		if offer, err = m.offerPayload(r); err != nil {
			m.o.Log.Error("ota: offer", "err", err)
			want = nil
		}
	}
	m.mu.Unlock()
	for _, id := range slices.Sorted(maps.Keys(want)) {
		v := want[id]
		m.mu.Lock()
		prev, known := m.offered[id]
		m.mu.Unlock()
		if known && prev == v {
			continue
		}
		payload := offer
		if v == "" {
			payload = nil
		}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pub.Publish(pctx, protocol.Topic(m.o.Root, id, protocol.KindOTA), payload, 1, true)
		cancel()
		if err != nil {
			m.o.Log.Warn("ota: offer not published; retrying", "device", id, "err", err)
			continue
		}
		m.mu.Lock()
		m.offered[id] = v
		m.mu.Unlock()
		if v == "" {
			m.o.Log.Info("ota offer withdrawn", "device", id)
		} else {
			m.o.Log.Info("ota offered", "device", id, "version", v)
		}
	}
}

// tookUp reports whether id began taking up version (downloading or
// further): a pause leaves such a device alone.
func (m *Manager) tookUp(id, version string) bool {
	s, ok := m.reports[id]
	if !ok || s.Release != version {
		return false
	}
	switch s.State {
	case protocol.OTADownloading, protocol.OTAInstalled, protocol.OTAHealthy, protocol.OTARolledBack:
		return true
	}
	return false
}

func (m *Manager) offerPayload(r *Rollout) ([]byte, error) {
	o := protocol.Offer{Manifest: r.Manifest}
	path := "/releases/" + r.Binary
	if m.o.BaseURL != "" {
		o.URL = m.o.BaseURL + path
	} else {
		o.Port, o.Path = m.o.Port, path
	}
	return protocol.EncodeOffer(o)
}
