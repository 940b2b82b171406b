package broker

import (
	"crypto/rand"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
)

// This file keeps the TLS session-ticket keys. A device that reconnects
// offers the ticket the broker gave it at its last handshake; if the
// broker can still decrypt it, the two resume that session (TLS 1.3 PSK
// with a fresh ECDHE) instead of exchanging and verifying certificates
// and signatures on both sides. Go makes its ticket keys at random when a
// process starts, so a fleet returning to a restarted broker paid a full
// handshake per device; with a data directory the keys are kept there, so
// a restart keeps them.
//
// What a resumed session skips, and what still holds: Go does not verify
// the client certificate again (VerifyPeerCertificate is not called); it
// restores the verified chain from the ticket and refuses to resume
// (falling back to a full handshake) when any certificate of that chain
// has expired or its root is no longer among the CAs the broker trusts
// now (crypto/tls, checkForResumption; TestResumption proves both with
// the toolchain in use). The broker checks revocation itself on a resumed
// session (verifyResumed), and the auth hook checks the CN and revocation
// again at CONNECT, from the same restored chain.

// TicketKeyFile is the name of the session-ticket key file inside
// Options.DataDir. It is as secret as the broker's private key: see
// docs/certificates.md.
const TicketKeyFile = "tls-ticket-keys.json"

const (
	// TicketKeyRotation is how long one key encrypts new tickets before
	// a new one takes over.
	TicketKeyRotation = 24 * time.Hour
	// TicketLifetime is the longest Go's server resumes a session
	// (crypto/tls maxSessionTicketLifetime, 7 days, counted from the
	// handshake that issued the ticket). A key is kept for decryption
	// only that long after it stopped encrypting: an older key can open
	// no ticket Go would still accept, so the file holds at most 8 keys.
	TicketLifetime = 7 * 24 * time.Hour
)

// ticketKey is one session-ticket key and when it began encrypting.
type ticketKey struct {
	Created time.Time `json:"created"`
	Key     []byte    `json:"key"` // 32 bytes, base64 in the file
}

// ticketFile is the key file's contents: the keys, newest (the one that
// encrypts) first.
type ticketFile struct {
	Keys []ticketKey `json:"keys"`
}

// ticketKeys holds the keys, applies them to the listener's TLS
// configuration, rotates them on a schedule and keeps the file (path ""
// keeps them in memory only).
type ticketKeys struct {
	path  string
	log   *slog.Logger
	apply func(keys [][32]byte) // tls.Config.SetSessionTicketKeys of the listener

	mu    sync.Mutex
	keys  []ticketKey
	timer *time.Timer
	done  bool
}

func newTicketKeys(dataDir string, log *slog.Logger, apply func([][32]byte)) *ticketKeys {
	t := &ticketKeys{log: log, apply: apply}
	if dataDir != "" {
		t.path = filepath.Join(dataDir, TicketKeyFile)
	}
	return t
}

// start reads the key file, if any, rotates what is due and applies the
// keys, then keeps rotating them until stop. A missing file starts with a
// new key; a file that cannot be read as keys is replaced (it holds
// nothing but keys: losing it only costs one full handshake per device).
func (t *ticketKeys) start() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	rewrite := false
	if t.path != "" {
		keys, err := readTicketKeys(t.path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			t.log.Warn("TLS session-ticket key file unreadable: replaced by a new key (returning devices make a full handshake once)", "file", t.path, "error", err)
		default:
			t.keys = keys
			if st, err := os.Stat(t.path); err == nil && st.Mode().Perm()&0o077 != 0 {
				// Someone copied or restored it carelessly: close it
				// again (the keys may have been read meanwhile: a
				// SIGHUP replaces them).
				t.log.Warn("TLS session-ticket key file readable by others: rewritten readable by its owner only", "file", t.path, "mode", st.Mode().Perm().String())
				rewrite = true
			}
		}
	}
	if err := t.rotateLocked(time.Now(), false); err != nil {
		return err
	}
	if rewrite {
		if err := writeTicketKeys(t.path, t.keys); err != nil {
			t.log.Error("TLS session-ticket key file not rewritten", "file", t.path, "error", err)
		}
	}
	t.scheduleLocked()
	return nil
}

// renew replaces every key by a new one: no session from before resumes.
// The broker does it when it reloads its CA and certificates, so a
// certificate from a CA taken out of the file can never come back through
// an old ticket, and so that an operator who fears the key file was read
// can retire it with a SIGHUP.
func (t *ticketKeys) renew() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.rotateLocked(time.Now(), true); err != nil {
		return err
	}
	t.scheduleLocked()
	return nil
}

// stop ends the rotation.
func (t *ticketKeys) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.done = true
	if t.timer != nil {
		t.timer.Stop()
	}
}

// rotateLocked brings the keys up to date at now (all replaced when
// fresh), writes the file when they changed and applies them.
func (t *ticketKeys) rotateLocked(now time.Time, fresh bool) error {
	keys := t.keys
	if fresh {
		keys = nil
	}
	keys, changed, err := rotateTicketKeys(keys, now, rand.Read)
	if err != nil {
		return fmt.Errorf("broker: TLS session-ticket keys: %w", err)
	}
	if changed && t.path != "" {
		if err := writeTicketKeys(t.path, keys); err != nil {
			// The new keys still serve this process; a restart then
			// makes every returning device do a full handshake.
			t.log.Error("TLS session-ticket keys not saved: after a restart devices make a full handshake", "file", t.path, "error", err)
		}
	}
	t.keys = keys
	raw := make([][32]byte, len(keys))
	for i, k := range keys {
		copy(raw[i][:], k.Key)
	}
	t.apply(raw)
	if changed {
		t.log.Info("TLS session-ticket keys rotated", "keys", len(keys), "file", t.path, "next_rotation", keys[0].Created.Add(TicketKeyRotation).UTC().Format(time.RFC3339))
	}
	return nil
}

// scheduleLocked arms the timer for the next rotation.
func (t *ticketKeys) scheduleLocked() {
	if t.done {
		return
	}
	if t.timer != nil {
		t.timer.Stop()
	}
	wait := max(time.Until(t.keys[0].Created.Add(TicketKeyRotation)), time.Second)
	t.timer = time.AfterFunc(wait, func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.done {
			return
		}
		if err := t.rotateLocked(time.Now(), false); err != nil {
			t.log.Error("TLS session-ticket key rotation failed: the current keys stay", "error", err)
		}
		t.scheduleLocked()
	})
}

// rotateTicketKeys returns keys (newest first) as they must be at now:
// keys created in the future (a clock set back) or that stopped
// encrypting more than TicketLifetime ago are dropped, and a new key is
// put first when none is left or the newest is TicketKeyRotation old.
// changed reports whether anything differs from keys.
func rotateTicketKeys(keys []ticketKey, now time.Time, random func([]byte) (int, error)) (out []ticketKey, changed bool, err error) {
	// Key i encrypted from its Created until key i-1's (the newest: until
	// now), and opens tickets for TicketLifetime after that.
	retired := now
	for _, k := range keys {
		if k.Created.After(now) || now.Sub(retired) > TicketLifetime {
			changed = true
			continue
		}
		out = append(out, k)
		retired = k.Created
	}
	if len(out) == 0 || now.Sub(out[0].Created) >= TicketKeyRotation {
		k := ticketKey{Created: now.UTC().Truncate(time.Second), Key: make([]byte, 32)}
		if _, err := random(k.Key); err != nil {
			return keys, false, fmt.Errorf("new key: %w", err)
		}
		out = append([]ticketKey{k}, out...)
		changed = true
	}
	return out, changed, nil
}

// readTicketKeys reads the key file: keys of 32 bytes, newest first.
func readTicketKeys(path string) ([]ticketKey, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f ticketFile
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	for i, k := range f.Keys {
		if len(k.Key) != 32 {
			return nil, fmt.Errorf("%s: key %d has %d bytes, want 32", path, i, len(k.Key))
		}
		if i > 0 && k.Created.After(f.Keys[i-1].Created) {
			return nil, fmt.Errorf("%s: keys not newest first", path)
		}
	}
	return f.Keys, nil
}

// writeTicketKeys replaces the key file, readable by its owner only.
func writeTicketKeys(path string, keys []ticketKey) error {
	data, err := json.MarshalIndent(ticketFile{Keys: keys}, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(path, append(data, '\n'), 0o600)
}

// bootIDLen is the length of the id of this broker process that begins
// every ticket it issues: transport's takeover policy compares it
// (transport.issuerLen, the length of OpenSSL's key name too).
const bootIDLen = 16

// markTickets makes h, the configuration of each handshake, issue tickets
// that begin with an id of this process, made at random, followed by
// the ticket keys' encryption by keys (the configuration whose keys
// ticketKeys sets). A device cannot tell otherwise whether the broker that
// let it resume is the one that just closed its connection (a session
// taken over by a second board with its certificate) or a restarted one;
// the id says so, and is no secret.
func markTickets(h, keys *tls.Config) error {
	var boot [bootIDLen]byte
	if _, err := rand.Read(boot[:]); err != nil {
		return fmt.Errorf("boot id: %w", err)
	}
	h.WrapSession = func(cs tls.ConnectionState, ss *tls.SessionState) ([]byte, error) {
		t, err := keys.EncryptTicket(cs, ss)
		if err != nil {
			return nil, err
		}
		return append(boot[:], t...), nil
	}
	h.UnwrapSession = func(ticket []byte, cs tls.ConnectionState) (*tls.SessionState, error) {
		if len(ticket) < bootIDLen {
			return nil, nil // not ours: a full handshake
		}
		// Whatever process issued it: resuming after a restart is the point.
		return keys.DecryptTicket(ticket[bootIDLen:], cs)
	}
	return nil
}
