package transport

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"
)

// Trouble is a condition of the connection that reconnecting does not
// cure: a person must act. Client reports each through Options.OnTrouble
// when it begins and when it ends.
type Trouble int

const (
	// TroubleTakeover: the broker keeps closing this client's healthy
	// connection and letting it straight back in, as it does when another
	// client connects with the same id: for us, another board with the
	// same certificate (a cloned SD card). The two take the session from
	// each other over and over; the client backs off (TakeoverBackoff)
	// instead of joining the fight at full speed.
	TroubleTakeover Trouble = iota + 1
	// TroubleTLSRefused: TLSRefusedAfter connect attempts in a row failed
	// in the TLS handshake: the broker refuses this client's certificate
	// (expired, from another CA) or this client the broker's.
	TroubleTLSRefused
)

func (t Trouble) String() string {
	switch t {
	case TroubleTakeover:
		return "session taken over repeatedly"
	case TroubleTLSRefused:
		return "TLS refused"
	}
	return fmt.Sprintf("trouble(%d)", int(t))
}

// The takeover policy. A takeover is the broker closing a connection that
// was healthy while the broker itself stays up. Two facts tell it from the
// losses fast reconnects are for: our keep-alive did not condemn the
// connection (a hung broker, a partition), and the next connection, made
// with no failed attempt before it, resumed the TLS session of the one
// before with the broker process that issued it: the broker that closed
// us is the one that let us straight back in. A broker that restarted
// either has new session ticket keys (Mosquitto's are made at start), so
// its first connection after the restart is a full handshake; or (the
// embedded broker with a data directory) it keeps its keys so that a
// returning fleet resumes, but the tickets it issues begin with an id of
// its process, and the ticket resumed and the one issued then differ
// (brokerSessions.sameIssuer). Either way the loss before is never
// counted: a broker restart, or several in a row, however quick, never
// starts an episode and its recovery stays fast.
//
// The age of the lost connection is deliberately not a criterion: once
// one of two boards on one certificate backs off, the other one holds the
// session for the whole of that wait, seconds and then minutes, and would
// otherwise never notice.
const (
	// TakeoverCount takeovers within TakeoverWindow start an episode: two
	// boards on one certificate take the session from each other many
	// times a second; a device alone sees none.
	TakeoverCount  = 3
	TakeoverWindow = time.Minute
	// TakeoverStable: a connection that stays up this long ends the
	// episode. Twice TakeoverBackoff.Max, so that while the other board
	// is still around (coming back at least every TakeoverBackoff.Max)
	// both keep saying so.
	TakeoverStable = 10 * time.Minute
)

// TakeoverBackoff spaces the reconnects of an episode: from seconds up to
// minutes, each drawn from the upper half of its range, so that two boards
// fighting over one session fall out of step and one of them holds it for
// a while.
var TakeoverBackoff = Backoff{Min: 5 * time.Second, Max: 5 * time.Minute}

// TLSRefusedAfter is how many connect attempts in a row must fail in the
// TLS handshake before TroubleTLSRefused begins: one may be a broker
// restarting with a new certificate; three are a certificate to replace.
const TLSRefusedAfter = 3

// takeoverGuard applies the takeover policy to one client's connection
// history. Only the client's Run goroutine uses it.
type takeoverGuard struct {
	backoff Backoff
	// lostAt is when the last connection was lost, if that loss may be a
	// takeover: the next connection decides.
	lostAt  time.Time
	pending bool
	takes   []time.Time // takeovers within the window
	episode bool
	level   int // takeover waits drawn in this episode
}

// lost records the loss, at at, of a connection; keepAliveFailed is whether
// our own keep-alive condemned it (a silent broker, not a takeover). During
// an episode, a loss that may be a takeover is followed by the takeover
// backoff: it returns that wait and ok true. Otherwise the ordinary
// backoff applies.
func (g *takeoverGuard) lost(at time.Time, keepAliveFailed bool) (wait time.Duration, ok bool) {
	g.pending, g.lostAt = !keepAliveFailed, at
	if !g.pending || !g.episode {
		return 0, false
	}
	wait = g.backoff.Delay(g.level)
	g.level++
	return wait, true
}

// failed records a failed connect attempt: the broker, or the way to it,
// is down. That is an outage, not a takeover: the loss before it and the
// takeovers so far no longer count. An episode under way goes on.
func (g *takeoverGuard) failed() {
	g.pending, g.takes = false, g.takes[:0]
}

// connected records a new connection; resumed is whether it resumed the
// TLS session of an earlier one. It reports whether this connection's
// verdict on the loss before it began an episode.
func (g *takeoverGuard) connected(resumed bool) (started bool) {
	if !g.pending || !resumed {
		g.pending = false
		return false
	}
	g.pending = false
	kept := g.takes[:0]
	for _, t := range g.takes {
		if g.lostAt.Sub(t) < TakeoverWindow {
			kept = append(kept, t)
		}
	}
	g.takes = append(kept, g.lostAt)
	if g.episode || len(g.takes) < TakeoverCount {
		return false
	}
	g.episode = true
	return true
}

// active reports whether an episode is under way.
func (g *takeoverGuard) active() bool { return g.episode }

// end ends the episode: a connection stayed up for TakeoverStable.
func (g *takeoverGuard) end() {
	g.episode, g.level, g.takes = false, 0, g.takes[:0]
}

// keepAliveFailed reports whether a lost connection was condemned by this
// side's keep-alive: our liveness monitor, or paho's own ping timeout.
func keepAliveFailed(err error) bool {
	return errors.Is(err, errSilent) || (err != nil && strings.Contains(err.Error(), "pingresp not received"))
}

// tlsRefusal reports whether a failed connect attempt is a TLS refusal,
// and who refused whom. Against a TLS 1.3 server, a refused client
// certificate shows only after the handshake, as the server's alert read
// instead of the CONNACK; paho and dial keep the error chain (%w), so it is
// found either way.
func tlsRefusal(err error) (string, bool) {
	if alert := remoteAlert(err); alert != nil {
		return "the broker refused the TLS handshake (" + alert.Error() + "): is this client's certificate expired, revoked or from another CA?", true
	}
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		invalid  x509.CertificateInvalidError
		hostname x509.HostnameError
	)
	if errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &invalid) || errors.As(err, &hostname) {
		return "this client refused the broker's certificate: is the broker's certificate expired, from another CA, or for another host name?", true
	}
	return "", false
}

// remoteAlert returns the TLS alert the peer sent, found anywhere in err's
// tree (errors.As would stop at the first *net.OpError, which may be the
// reset the alert explains), or nil.
func remoteAlert(err error) error {
	if op, ok := err.(*net.OpError); ok && op.Op == "remote error" {
		return op.Err
	}
	switch u := err.(type) {
	case interface{ Unwrap() error }:
		return remoteAlert(u.Unwrap())
	case interface{ Unwrap() []error }:
		for _, e := range u.Unwrap() {
			if a := remoteAlert(e); a != nil {
				return a
			}
		}
	}
	return nil
}
