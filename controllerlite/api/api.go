// Package api is controllerlite's HTTP API and its Go client, which the
// controllerlite CLI uses.
//
//	GET  /api/devices        every device, a JSON array sorted by id
//	GET  /api/devices/{id}   one device
//	PUT  /api/devices/{id}   set properties: {"setpoint_c": 21.5, "mode": "heat"}
//	GET  /api/devices/{id}/history?from=&to=&step=   telemetry history (history.go)
//	GET  /api/events         the live feed, when Options.Events is set (package web)
//	GET  /healthz            fleet status; 200 once ready, 503 before
//	GET  /metrics            Prometheus metrics, when Options.Metrics is set
//
// A device is the JSON of fleet.Device: id, online, vc, props (name to
// {"val", "w"} as on the wire), telemetry (the latest, as on the wire, or
// null), last_seen and pending. Errors are {"error": "reason"} with 400 for
// bad JSON, an unknown property or an invalid value, 404 for an unknown
// device, 401 without the right token, and 503 while the controller has not
// read the broker's retained state.
//
// With a token (always required when the listener is not on a loopback
// address: see Listen), every /api/ request must carry
// "Authorization: Bearer TOKEN", and so must /metrics; a browser logged in
// to the dashboard (Options.Session) may use its session cookie instead.
// /healthz needs no token.
package api

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
)

// DefaultAddr is where the API listens unless told otherwise.
const DefaultAddr = "127.0.0.1:8080"

// DefaultSetTimeout bounds a PUT, including its wait for readiness.
const DefaultSetTimeout = 10 * time.Second

// maxBody bounds a PUT body: two properties fit in far less.
const maxBody = 64 << 10

// Fleet is what the API serves; *fleet.Fleet implements it.
type Fleet interface {
	Devices() []fleet.Device
	Device(id string) (fleet.Device, bool)
	Set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error)
	Status() fleet.Status
}

// Options configure the handler.
type Options struct {
	// Token, if not empty, is required on every /api/ request.
	Token string
	// SetTimeout defaults to DefaultSetTimeout.
	SetTimeout time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Session, if set, is a second way past the token: it reports whether
	// the request carries a valid dashboard session (package web's
	// cookie), so the browser needs no bearer token.
	Session func(*http.Request) bool
	// Events, if set, is served at GET /api/events behind the same check
	// as every /api/ request: the dashboard's live feed.
	Events http.Handler
	// Delete, when set, serves DELETE /api/devices/{id} (delete.go).
	Delete Deleter
	// History answers GET /api/devices/{id}/history; nil: 404.
	History History
	// Metrics, if set, is served at GET /metrics under the same
	// authentication as /api/ (see package controllerlite/metrics).
	Metrics http.Handler
	// OTA, when set, serves the /api/ota endpoints (api/ota.go).
	OTA OTA
}

type handler struct {
	f     Fleet
	opts  Options
	token [sha256.Size]byte
	log   *slog.Logger
}

// NewHandler returns the API's HTTP handler.
func NewHandler(f Fleet, o Options) http.Handler {
	if o.SetTimeout <= 0 {
		o.SetTimeout = DefaultSetTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	h := &handler{f: f, opts: o, log: o.Logger, token: sha256.Sum256([]byte(o.Token))}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/devices", h.auth(h.list))
	mux.HandleFunc("GET /api/devices/{id}", h.auth(h.get))
	mux.HandleFunc("PUT /api/devices/{id}", h.auth(h.put))
	if o.Delete != nil {
		mux.HandleFunc("DELETE /api/devices/{id}", h.auth(h.del))
	}
	mux.HandleFunc("GET /api/devices/{id}/history", h.auth(h.history))
	if o.Events != nil {
		mux.HandleFunc("GET /api/events", h.auth(o.Events.ServeHTTP))
	}
	mux.HandleFunc("GET /healthz", h.health)
	if o.Metrics != nil {
		mux.HandleFunc("GET /metrics", h.auth(o.Metrics.ServeHTTP))
	}
	h.registerOTA(mux)
	return mux
}

// auth wraps an /api/ handler (and /metrics) with the bearer-token check.
func (h *handler) auth(next http.HandlerFunc) http.HandlerFunc {
	if h.opts.Token == "" {
		return next
	}
	return func(w http.ResponseWriter, r *http.Request) {
		if h.opts.Session != nil && h.opts.Session(r) {
			next(w, r)
			return
		}
		scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
		// Hashing first makes the comparison constant-time in the
		// token's length as well as its content.
		sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
		if !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare(sum[:], h.token[:]) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="controllerlite"`)
			writeError(w, http.StatusUnauthorized, "a valid bearer token is required (Authorization: Bearer TOKEN)")
			return
		}
		next(w, r)
	}
}

func (h *handler) list(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, h.f.Devices())
}

func (h *handler) get(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	d, ok := h.f.Device(id)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("unknown device %q", id))
		return
	}
	writeJSON(w, http.StatusOK, d)
}

func (h *handler) put(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	changes, err := decodeChanges(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), h.opts.SetTimeout)
	defer cancel()
	d, err := h.f.Set(ctx, id, changes)
	switch {
	case err == nil:
		h.log.Info("api: set", "device", id, "changes", changes, "remote", r.RemoteAddr)
		writeJSON(w, http.StatusOK, d)
	case errors.Is(err, fleet.ErrInvalid):
		writeError(w, http.StatusBadRequest, err.Error())
	case errors.Is(err, fleet.ErrUnknownDevice):
		writeError(w, http.StatusNotFound, err.Error())
	case errors.Is(err, fleet.ErrClockExhausted):
		writeError(w, http.StatusConflict, err.Error())
	case errors.Is(err, fleet.ErrNotReady), errors.Is(err, fleet.ErrStopped),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, context.Canceled):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	case errors.Is(err, fleet.ErrStore):
		// The database out of reach (restarting, a failover): nothing was
		// published, and the same write may be sent again.
		h.log.Error("api: set: the store refused the write", "device", id, "error", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		h.log.Error("api: set", "device", id, "error", err)
		writeError(w, http.StatusInternalServerError, err.Error())
	}
}

// decodeChanges reads the PUT body: one JSON object of property names to
// values. Numbers stay json.Number so the protocol's validation sees
// exactly what was sent.
func decodeChanges(body io.Reader) (map[string]any, error) {
	dec := json.NewDecoder(body)
	dec.UseNumber()
	var changes map[string]any
	if err := dec.Decode(&changes); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, fmt.Errorf("body over %d bytes", tooBig.Limit)
		}
		return nil, fmt.Errorf("body is not a JSON object of properties: %v", err)
	}
	if changes == nil {
		return nil, errors.New("body is not a JSON object of properties")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the JSON object")
	}
	return changes, nil
}

func (h *handler) health(w http.ResponseWriter, _ *http.Request) {
	st := h.f.Status()
	code := http.StatusOK
	if !st.Ready {
		code = http.StatusServiceUnavailable
	}
	writeJSON(w, code, st)
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		writeError(w, http.StatusInternalServerError, "encode response: "+err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	b, _ := json.Marshal(map[string]string{"error": msg})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

// ReadTokenFile reads an API token: the file's content without surrounding
// white space. An empty file is an error, not "no token".
func ReadTokenFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("read API token: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("read API token: %s is empty", path)
	}
	if strings.ContainsAny(tok, " \t\r\n") {
		return "", fmt.Errorf("read API token: %s holds more than one word", path)
	}
	return tok, nil
}

// Listen opens the API's listener on addr and enforces the token rule: on
// an address other than loopback (0.0.0.0, [::], a LAN address) the API is
// reachable from other machines, and it refuses to start without a token.
// The check is made on the address actually bound, so a host name that
// resolves off loopback is caught too.
func Listen(addr, token string) (net.Listener, error) {
	if addr == "" {
		addr = DefaultAddr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("http: listen on %s: %w", addr, err)
	}
	if token == "" && !IsLoopback(ln.Addr()) {
		ln.Close()
		return nil, fmt.Errorf("http: %s is not a loopback address: the API would be open to the network, so it needs a token (--http-token-file FILE); or bind it to 127.0.0.1", addr)
	}
	return ln, nil
}

// IsLoopback reports whether a listener address accepts loopback
// connections only.
func IsLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}
