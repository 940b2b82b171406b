package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/controllerlite/store/pgstore"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// startInstance makes the controller one of several sharing the database
// when it has a PostgreSQL store and an external broker (package lease,
// fleet/shard.go): it holds a lease, acts for its share of the devices
// only, and reads the others' from the database every Lease/3. With the
// bbolt store or the embedded broker it is the only instance, as before.
func (s *Server) startInstance(ctx context.Context) error {
	pg, ok := s.st.(*pgstore.Store)
	if !ok || s.tc == nil {
		return nil
	}
	name := s.cfg.Instance
	if name == "" {
		cn, err := provisioning.CommonName(s.cfg.CertFile)
		if err != nil {
			return fmt.Errorf("--cert: %w", err)
		}
		name = strings.TrimPrefix(cn, protocol.ControllerPrefix)
	}
	if !protocol.ValidID(name) {
		return fmt.Errorf("--instance %q: want 1-63 characters of a-z, 0-9, '_' or '-'", name)
	}
	k, err := lease.New(lease.Options{Name: name, Lease: s.cfg.Lease, Registry: pg, OnChange: s.fl.SetView,
		Logger: s.log.With("part", "lease", "instance", name)})
	if err != nil {
		return fmt.Errorf("--lease: %w", err)
	}
	if err := s.fl.Share(s.tc); err != nil {
		return err
	}
	s.instance = name
	s.wg.Add(2)
	go func() { defer s.wg.Done(); k.Run(ctx) }()
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(k.Interval())
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.fl.Refresh()
			}
		}
	}()
	s.log.Info("one of several controller instances", "instance", name, "lease", s.cfg.Lease)
	return nil
}

// checkInstance checks --instance and --lease.
func checkInstance(cfg *Config) error {
	if cfg.Instance != "" {
		if cfg.Store == "" || cfg.Broker == "" {
			return errors.New("--instance needs --store postgres://... and --broker: instances share a PostgreSQL store and an external broker")
		}
		if !protocol.ValidID(cfg.Instance) {
			return fmt.Errorf("--instance %q: want 1-63 characters of a-z, 0-9, '_' or '-'", cfg.Instance)
		}
	}
	if cfg.Lease != 0 && cfg.Lease < lease.MinLease {
		return fmt.Errorf("--lease %v: at least %v", cfg.Lease, lease.MinLease)
	}
	return nil
}

// Instance is the controller's name among several, "" when it is the only
// one.
func (s *Server) Instance() string { return s.instance }
