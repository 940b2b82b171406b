package sensors

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/thermofleet/thermo/hal"
)

// Reopen is a sensor that opens itself on first use and again after
// repeated read failures, so a sensor unplugged at boot or knocked off the
// bus comes back without a restart, and the thermostat keeps running (with
// sensor_ok false) meanwhile instead of crash-looping.
type Reopen struct {
	name  string
	open  func() (hal.Sensor, error)
	log   *slog.Logger
	after int // consecutive read failures before reopening

	mu      sync.Mutex
	cur     hal.Sensor
	fails   int
	failing bool // a failure was logged; its recovery will be too
}

// NewReopen returns a sensor named name that calls open when it has no
// open device. It does not call open itself: call Read (or Probe).
func NewReopen(name string, open func() (hal.Sensor, error), log *slog.Logger) *Reopen {
	if log == nil {
		log = slog.Default()
	}
	return &Reopen{name: name, open: open, log: log, after: 3}
}

// Name is the configured name.
func (s *Reopen) Name() string { return s.name }

// Probe opens the sensor now if it is not open, reporting why it could not.
func (s *Reopen) Probe() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.probeLocked()
}

func (s *Reopen) probeLocked() error {
	if s.cur != nil {
		return nil
	}
	cur, err := s.open()
	if err != nil {
		return err
	}
	s.cur = cur
	return nil
}

// Read reads the open sensor, opening it first if needed.
func (s *Reopen) Read() hal.Reading {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.probeLocked(); err != nil {
		s.noteFailure(err)
		r := hal.Reading{Sensor: s.name, Err: fmt.Errorf("open sensor %q: %w", s.name, err)}
		return r
	}
	r := s.cur.Read()
	err := r.Err
	if err == nil {
		if s.failing {
			s.log.Info("sensor back", "sensor", s.name)
		}
		s.fails, s.failing = 0, false
		return r
	}
	s.noteFailure(err)
	if s.fails >= s.after && !errors.Is(err, ErrImplausible) {
		// Drop the device so the next read probes the chip again (it may
		// have been power-cycled and lost its configuration).
		if h, ok := s.cur.(interface{ Halt() error }); ok {
			_ = h.Halt()
		}
		s.cur = nil
	}
	return r
}

func (s *Reopen) noteFailure(err error) {
	s.fails++
	if s.failing {
		return
	}
	s.failing = true
	if errors.Is(err, ErrAbsent) {
		s.log.Warn("sensor absent; will keep trying", "sensor", s.name, "err", err)
	} else {
		s.log.Error("sensor failing; will keep trying", "sensor", s.name, "err", err)
	}
}

var _ hal.Sensor = (*Reopen)(nil)
