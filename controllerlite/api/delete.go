package api

import (
	"context"
	"errors"
	"net/http"
	"net/url"

	"github.com/thermofleet/thermo/controllerlite/fleet"
)

// Retired is the answer of DELETE /api/devices/{id}.
type Retired struct {
	ID string `json:"id"`
	// Revoked is true when the device's certificates were revoked (the
	// controller has a signing key), false when it was only forgotten.
	Revoked bool `json:"revoked"`
	// Note says what is left to do, if anything (a Mosquitto CRL to
	// refresh, a device that was not revoked).
	Note string `json:"note,omitempty"`
}

// Deleter retires a device (the server: revoke, then fleet.Delete).
type Deleter func(ctx context.Context, id string) (Retired, error)

// del is DELETE /api/devices/{id}.
func (h *handler) del(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.SetTimeout)
	defer cancel()
	res, err := h.opts.Delete(ctx, id)
	switch {
	case err == nil:
		h.log.Info("api: device deleted", "device", id, "revoked", res.Revoked, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusOK, res)
	case errors.Is(err, fleet.ErrUnknownDevice):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, fleet.ErrNotReady), errors.Is(err, fleet.ErrStopped), errors.Is(err, fleet.ErrLinkDown),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		h.log.Error("api: delete", "device", id, "error", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// Delete retires a device: DELETE /api/devices/{id}.
func (c *Client) Delete(ctx context.Context, id string) (Retired, error) {
	var out Retired
	err := c.do(ctx, http.MethodDelete, "/api/devices/"+url.PathEscape(id), nil, &out)
	return out, err
}
