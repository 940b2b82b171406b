package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/internal/lograte"
	"github.com/thermofleet/thermo/protocol"
)

// This file holds what the broker alone can see about a device's identity:
// one certificate used by two connections that keep taking the session from
// each other (two boards made from one cloned SD card), and a device whose
// certificate the TLS handshake refuses (expired). Both become device
// alerts through OnAlert, and both are logged so that neither floods the
// log nor goes unnoticed.

// The takeover rule: TakeoverCount takeovers of one client id's live
// session within TakeoverWindow start an episode; TakeoverQuiet without a
// takeover ends it. A device alone is taken over only when it reconnects
// before the broker noticed its previous connection died (once per outage,
// and no faster than its keep-alive); two boards on one certificate do it
// many times a second, and even once both have backed off to their longest
// wait (transport.TakeoverBackoff, 5 minutes) every few minutes, which
// keeps the episode open.
const (
	TakeoverCount  = 3
	TakeoverWindow = time.Minute
	TakeoverQuiet  = 10 * time.Minute
)

// maxRemotes bounds the remote addresses an episode's detail names.
const maxRemotes = 4

// identityCure is what a person must do about a duplicate identity.
const identityCure = "give every board its own certificate (controllerlite pki device <id>) and never clone a provisioned SD card"

// AlertFunc receives the device alerts only the broker can see
// (protocol.AlertDuplicateIdentity, protocol.AlertTLSRefused): raised with
// what was seen, or cleared. The broker knows certificates, not the fleet:
// the receiver decides which ids it takes alerts for. It must not block.
type AlertFunc func(id, code string, raised bool, detail string)

// identity bundles the watches of this file for the broker's hooks.
type identity struct {
	alerts    *alerter
	takeovers *takeoverWatch
	refusals  *refusalLog
}

// newIdentity returns the watches; caFile holds the CA certificates client
// certificates must chain to.
func newIdentity(log *slog.Logger, caFile string) (*identity, error) {
	roots, err := readCerts(caFile)
	if err != nil {
		return nil, err
	}
	a := newAlerter(log)
	return &identity{alerts: a, takeovers: newTakeoverWatch(log, a), refusals: newRefusalLog(log, roots, a)}, nil
}

// readCerts reads the PEM certificates of file.
func readCerts(file string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read CA certificates: %w", err)
	}
	var certs []*x509.Certificate
	for {
		var b *pem.Block
		if b, data = pem.Decode(data); b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("CA certificates %s: %w", file, err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return nil, fmt.Errorf("CA certificates %s: no PEM certificate found", file)
	}
	return certs, nil
}

// taken: a new connection from newRemote took over the live session of
// client id, held by a connection from oldRemote.
func (i *identity) taken(id, oldRemote, newRemote string) {
	i.takeovers.taken(id, oldRemote, newRemote, time.Now())
}

// established: client id's session is established.
func (i *identity) established(id string) {
	i.takeovers.sessionStarted(id)
	i.refusals.connected(id)
}

// handshakeFailed: the TLS handshake of a connection from remote failed.
func (i *identity) handshakeFailed(remote string, err error) { i.refusals.handshakeFailed(remote, err) }

// stop ends the timers: nothing is reported after the broker closed.
func (i *identity) stop() { i.takeovers.stop() }

// OnAlert sets fn to receive the device alerts the broker sees. With fn
// set, logging a raise is left to fn's receiver (the fleet logs every
// raise at ERROR), so the log names it once; without, the broker logs it
// at ERROR itself. A device's first connection since Start clears both
// alerts, which a controller restarted during an episode would otherwise
// keep forever. Set it before Start.
func (b *Broker) OnAlert(fn AlertFunc) {
	if fn == nil {
		b.identity.alerts.fn.Store(nil)
		return
	}
	b.identity.alerts.fn.Store(&fn)
}

// alerter forwards alerts to the AlertFunc, if any.
type alerter struct {
	log *slog.Logger
	fn  atomic.Pointer[AlertFunc]

	mu   sync.Mutex
	seen map[string]bool // device ids connected since Start
}

func newAlerter(log *slog.Logger) *alerter {
	return &alerter{log: log, seen: map[string]bool{}}
}

// raise reports alert code of device id. msg and args are what the broker
// logs at ERROR when nobody receives its alerts.
func (a *alerter) raise(id, code, detail, msg string, args ...any) {
	if fn := a.fn.Load(); fn != nil {
		(*fn)(id, code, true, detail)
		return
	}
	a.log.Error(msg, args...)
}

func (a *alerter) clear(id, code string) {
	if fn := a.fn.Load(); fn != nil {
		(*fn)(id, code, false, "")
	}
}

// firstSession reports whether id connects for the first time since Start.
func (a *alerter) firstSession(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.seen[id] {
		return false
	}
	a.seen[id] = true
	return true
}

// takeoverWatch counts takeovers per client id and keeps episodes.
type takeoverWatch struct {
	log    *slog.Logger
	alerts *alerter

	mu     sync.Mutex
	ids    map[string]*takeovers
	swept  time.Time
	closed bool
}

// takeovers is one client id's recent takeovers.
type takeovers struct {
	times   []time.Time // within TakeoverWindow, or the whole episode's last
	remotes []string    // the hosts its connections came from, at most maxRemotes
	episode bool
	count   int         // takeovers in the episode
	timer   *time.Timer // ends the episode after TakeoverQuiet
}

func newTakeoverWatch(log *slog.Logger, alerts *alerter) *takeoverWatch {
	return &takeoverWatch{log: log, alerts: alerts, ids: map[string]*takeovers{}}
}

// taken records that a new connection from newRemote took over the live
// session of id held by a connection from oldRemote, at now.
func (w *takeoverWatch) taken(id, oldRemote, newRemote string, now time.Time) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return
	}
	w.sweep(now)
	t := w.ids[id]
	if t == nil {
		t = &takeovers{}
		w.ids[id] = t
	}
	for _, r := range []string{host(oldRemote), host(newRemote)} {
		if !slices.Contains(t.remotes, r) && len(t.remotes) < maxRemotes {
			t.remotes = append(t.remotes, r)
		}
	}
	t.times = append(slices.DeleteFunc(t.times, func(at time.Time) bool { return now.Sub(at) >= TakeoverWindow }), now)
	if t.episode {
		t.count++
		w.mu.Unlock()
		return
	}
	if len(t.times) < TakeoverCount {
		w.mu.Unlock()
		return
	}
	t.episode, t.count = true, len(t.times)
	t.timer = time.AfterFunc(TakeoverQuiet, func() { w.quiet(id, time.Now()) })
	detail := fmt.Sprintf("%d connections with the certificate of %s took its session from each other within %v (from %s): two boards share one certificate, a cloned SD card? %s",
		len(t.times), id, TakeoverWindow, strings.Join(t.remotes, ", "), identityCure)
	remotes := slices.Clone(t.remotes)
	w.mu.Unlock()
	if protocol.CheckDeviceID(id) != nil {
		// The controller's own certificate (an external controller
		// process): no device to carry the alert, so the log does.
		w.log.Error("one certificate used by several connections: they keep taking the session from each other", "client", id, "remotes", remotes, "cure", identityCure)
		return
	}
	w.alerts.raise(id, protocol.AlertDuplicateIdentity, detail,
		"one certificate used by several connections: they keep taking the session from each other",
		"client", id, "takeovers", TakeoverCount, "within", TakeoverWindow, "remotes", remotes, "cure", identityCure)
}

// quiet ends id's episode if it has had no takeover for TakeoverQuiet at
// now, and otherwise looks again when that much will have passed.
func (w *takeoverWatch) quiet(id string, now time.Time) {
	w.mu.Lock()
	t := w.ids[id]
	if w.closed || t == nil || !t.episode {
		w.mu.Unlock()
		return
	}
	last := t.times[len(t.times)-1]
	if left := TakeoverQuiet - now.Sub(last); left > 0 {
		t.timer.Reset(left)
		w.mu.Unlock()
		return
	}
	delete(w.ids, id)
	count := t.count
	w.mu.Unlock()
	w.log.Info("no more takeovers: the session of the client is its own again", "client", id, "takeovers", count, "quiet_for", TakeoverQuiet)
	if protocol.CheckDeviceID(id) == nil {
		w.alerts.clear(id, protocol.AlertDuplicateIdentity)
	}
}

// inEpisode reports whether id's session is being taken over repeatedly.
func (w *takeoverWatch) inEpisode(id string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.ids[id]
	return t != nil && t.episode
}

// sweep drops, at most once per window, the ids outside an episode whose
// last takeover is older than the window. Called with w.mu held.
func (w *takeoverWatch) sweep(now time.Time) {
	if now.Sub(w.swept) < TakeoverWindow {
		return
	}
	w.swept = now
	for id, t := range w.ids {
		if !t.episode && now.Sub(t.times[len(t.times)-1]) >= TakeoverWindow {
			delete(w.ids, id)
		}
	}
}

// stop cancels the episodes' timers: nothing is reported after Close.
func (w *takeoverWatch) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.closed = true
	for _, t := range w.ids {
		if t.timer != nil {
			t.timer.Stop()
		}
	}
}

// sessionStarted is called when a client's session is established: the
// first session of a device since Start clears what an earlier run of the
// controller raised and nobody cleared, unless an episode is under way.
func (w *takeoverWatch) sessionStarted(id string) {
	if protocol.CheckDeviceID(id) != nil || !w.alerts.firstSession(id) {
		return
	}
	w.alerts.clear(id, protocol.AlertTLSRefused)
	if !w.inEpisode(id) {
		w.alerts.clear(id, protocol.AlertDuplicateIdentity)
	}
}

// refusalLog reports failed TLS handshakes: per peer (the certificate's CN
// when one was presented, else the remote host) at WARN at most once per
// lograte interval, with the number of attempts since; the others at
// DEBUG. A device's own certificate, issued by our CA but expired or not
// yet valid, raises tls_refused on that device once.
type refusalLog struct {
	log    *slog.Logger
	limit  *lograte.Limiter
	alerts *alerter

	mu      sync.Mutex
	roots   []*x509.Certificate // the CAs client certificates must chain to; replaced by setRoots
	refused map[string]bool     // devices with tls_refused raised
}

func newRefusalLog(log *slog.Logger, roots []*x509.Certificate, alerts *alerter) *refusalLog {
	return &refusalLog{log: log, limit: lograte.New(lograte.DefaultInterval, nil), roots: roots, alerts: alerts, refused: map[string]bool{}}
}

// handshakeFailed reports a failed TLS handshake of a connection from
// remote.
func (r *refusalLog) handshakeFailed(remote string, err error) {
	key, cn := host(remote), ""
	var verr *tls.CertificateVerificationError
	if errors.As(err, &verr) && len(verr.UnverifiedCertificates) > 0 {
		cn = verr.UnverifiedCertificates[0].Subject.CommonName
		key = "cn=" + cn
	}
	args := []any{"remote", remote, "cn", cn, "error", err}
	if ok, n := r.limit.Allow(key); ok {
		r.log.Warn("connection refused: TLS handshake failed", append(args, "attempts", n, "report_every", r.limit.Interval())...)
	} else {
		r.log.Debug("connection refused: TLS handshake failed", args...)
	}
	if verr == nil {
		return
	}
	id, why, ok := r.ownButRefused(verr)
	if !ok {
		return
	}
	r.mu.Lock()
	first := !r.refused[id]
	r.refused[id] = true
	r.mu.Unlock()
	if first {
		r.alerts.raise(id, protocol.AlertTLSRefused, why, "device certificate refused", "client", id, "reason", why)
	}
}

// ownButRefused reports whether the refused certificate is a device's,
// issued by our CA and refused only for its dates: such a refusal is that
// device's alert. Anything else (another CA, a forged CN) belongs to no
// device, and may not create or alarm one.
func (r *refusalLog) ownButRefused(verr *tls.CertificateVerificationError) (id, why string, ok bool) {
	var invalid x509.CertificateInvalidError
	if !errors.As(verr.Err, &invalid) || invalid.Reason != x509.Expired {
		return "", "", false
	}
	leaf := verr.UnverifiedCertificates[0]
	id = leaf.Subject.CommonName
	if protocol.CheckDeviceID(id) != nil || !r.signedByRoot(leaf) {
		return "", "", false
	}
	why = fmt.Sprintf("the broker refuses this device's certificate: valid from %s to %s, and the broker's time is outside that (%s); issue a new one (controllerlite pki device %s), and check the board's clock",
		leaf.NotBefore.UTC().Format(time.RFC3339), leaf.NotAfter.UTC().Format(time.RFC3339), invalid.Detail, id)
	return id, why, true
}

// signedByRoot reports whether one of our CAs signed c. The dates are not
// checked: they are what was refused. Our PKI has no intermediate CAs.
func (r *refusalLog) signedByRoot(c *x509.Certificate) bool {
	r.mu.Lock()
	roots := r.roots
	r.mu.Unlock()
	for _, ca := range roots {
		if bytes.Equal(c.RawIssuer, ca.RawSubject) && c.CheckSignatureFrom(ca) == nil {
			return true
		}
	}
	return false
}

// setRoots replaces the CAs (the broker reloaded its CA file).
func (r *refusalLog) setRoots(roots []*x509.Certificate) {
	r.mu.Lock()
	r.roots = roots
	r.mu.Unlock()
}

// connected is called when a device's session is established: a
// tls_refused it had is over.
func (r *refusalLog) connected(id string) {
	r.mu.Lock()
	had := r.refused[id]
	delete(r.refused, id)
	r.mu.Unlock()
	r.limit.Reset("cn=" + id)
	if had {
		r.alerts.clear(id, protocol.AlertTLSRefused)
	}
}

// host is the host part of a remote address (the address itself if it
// has none): the board, whatever its source port.
func host(remote string) string {
	h, _, err := net.SplitHostPort(remote)
	if err != nil {
		return remote
	}
	return h
}
