package server

import (
	"context"
	"fmt"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/provisioning"
)

// retire is DELETE /api/devices/{id} (controllerlite delete): with a
// signing key the device is revoked first (its connection to the embedded
// broker is cut, it can renew no more), then the fleet removes its
// retained messages and its records.
func (s *Server) retire(ctx context.Context, id string) (api.Retired, error) {
	res := api.Retired{ID: id}
	if _, known := s.fl.Device(id); !known {
		return res, fmt.Errorf("%w %q", fleet.ErrUnknownDevice, id)
	}
	if s.renew != nil {
		if _, _, err := provisioning.Revoke(s.cfg.DataDir, "", provisioning.Revocation{ID: id, Reason: "deleted"}); err != nil {
			return res, err
		}
		res.Revoked = true
		s.revs.Fresh()
		if s.br != nil {
			if len(s.br.CutRevoked()) > 0 {
				s.awaitOffline(ctx, id)
			}
		} else {
			res.Note = "revoked in the controller's list; for Mosquitto refresh its CRL (controllerlite pki crl --dir PKI --data-dir " + s.cfg.DataDir + ") and send it SIGHUP"
		}
	} else {
		res.Note = "not revoked (the controller has no --signing-key): revoke it with controllerlite pki revoke " + id + " --data-dir " + s.cfg.DataDir + ", or it comes back with its next message"
	}
	if err := s.fl.Delete(ctx, id); err != nil {
		return res, err
	}
	// Its history goes with it: a new device of the same id starts a
	// history of its own.
	if err := s.hist.Delete(id); err != nil {
		return res, fmt.Errorf("delete %s: history: %w", id, err)
	}
	return res, nil
}

// awaitOffline waits (a little) until the fleet has taken in the will of
// the device just cut, so it does not bring the device back after Delete.
func (s *Server) awaitOffline(ctx context.Context, id string) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		if d, ok := s.fl.Device(id); !ok || !d.Online {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
