package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/thermofleet/thermo/controllerlite/ota"
)

// OTA is the rollout manager the API drives (controllerlite/ota).
type OTA interface {
	Start(manifest []byte, percent float64) (ota.Rollout, error)
	Pause(reason string) (ota.Rollout, error)
	Status() ota.Status
}

// RolloutRequest is the body of POST /api/ota/rollout.
type RolloutRequest struct {
	// Manifest is the signed manifest file's content.
	Manifest json.RawMessage `json:"manifest"`
	Percent  float64         `json:"percent"`
}

// registerOTA adds the OTA endpoints when the controller serves releases:
// GET /api/ota (the rollout and every device's state), POST
// /api/ota/rollout (start, or change the percentage of, a rollout) and
// POST /api/ota/pause.
func (h *handler) registerOTA(mux *http.ServeMux) {
	o := h.opts.OTA
	off := func(w http.ResponseWriter, _ *http.Request) {
		writeError(w, http.StatusNotFound, "over-the-air updates are off: start serve with --releases-dir")
	}
	if o == nil {
		mux.HandleFunc("/api/ota", h.auth(off))
		mux.HandleFunc("/api/ota/", h.auth(off))
		return
	}
	mux.HandleFunc("GET /api/ota", h.auth(func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, o.Status())
	}))
	mux.HandleFunc("POST /api/ota/rollout", h.auth(func(w http.ResponseWriter, r *http.Request) {
		var req RolloutRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody)).Decode(&req); err != nil {
			writeError(w, http.StatusBadRequest, "body: "+err.Error())
			return
		}
		ro, err := o.Start(req.Manifest, req.Percent)
		if err != nil {
			status := http.StatusInternalServerError
			if errors.Is(err, ota.ErrBadInput) {
				status = http.StatusBadRequest
			}
			writeError(w, status, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, ro)
	}))
	mux.HandleFunc("POST /api/ota/pause", h.auth(func(w http.ResponseWriter, _ *http.Request) {
		ro, err := o.Pause("paused by a user")
		switch {
		case errors.Is(err, ota.ErrNoRollout):
			writeError(w, http.StatusConflict, "no rollout to pause")
		case err != nil:
			writeError(w, http.StatusInternalServerError, err.Error())
		default:
			writeJSON(w, http.StatusOK, ro)
		}
	}))
}

// OTAStatus is GET /api/ota.
func (c *Client) OTAStatus(ctx context.Context) (ota.Status, error) {
	var s ota.Status
	err := c.do(ctx, http.MethodGet, "/api/ota", nil, &s)
	return s, err
}

// Rollout is POST /api/ota/rollout.
func (c *Client) Rollout(ctx context.Context, manifest []byte, percent float64) (ota.Rollout, error) {
	var r ota.Rollout
	err := c.do(ctx, http.MethodPost, "/api/ota/rollout", RolloutRequest{Manifest: manifest, Percent: percent}, &r)
	return r, err
}

// PauseRollout is POST /api/ota/pause.
func (c *Client) PauseRollout(ctx context.Context) (ota.Rollout, error) {
	var r ota.Rollout
	err := c.do(ctx, http.MethodPost, "/api/ota/pause", struct{}{}, &r)
	return r, err
}
