// Package release is what a signed thermostat release is: a manifest
// naming one binary (version, architecture, size, SHA-256, the oldest
// version it may upgrade, an expiry) signed with the fleet's ed25519
// release key, and the checks a board makes before it installs one.
//
// The key is made once (`controllerlite release keygen`) and kept off the
// fleet; boards trust only the public half they were installed with, so a
// controller that is taken over can withhold updates but not forge one.
package release

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"
)

// Format is the manifest format this code writes and reads.
const Format = 1

// ManifestSuffix is appended to the binary's file name to name its
// manifest: thermostat-1.4.0-linux-arm64.manifest.json.
const ManifestSuffix = ".manifest.json"

// MaxManifestSize bounds a manifest file; it also travels in an MQTT offer.
const MaxManifestSize = 2048

// signingContext prefixes the signed bytes, so a signature over a manifest
// can never be taken for one over anything else signed with the same key.
const signingContext = "thermofleet release manifest v1\n"

// Manifest describes one release binary. Its canonical form (the bytes
// signed) is signingContext followed by encoding/json's encoding of this
// struct: fields in this order, times in UTC to the second.
type Manifest struct {
	Format int `json:"format"`
	// Version is the binary's version (ParseVersion).
	Version string `json:"version"`
	// Arch is the platform the binary runs on: "linux/arm64",
	// "linux/amd64", "linux/arm/v6" (GOOS/GOARCH[/vGOARM]).
	Arch string `json:"arch"`
	// Binary is the binary's file name in the controller's releases
	// directory.
	Binary string `json:"binary"`
	Size   int64  `json:"size"`
	// SHA256 is the binary's hash, lower-case hex.
	SHA256 string `json:"sha256"`
	// MinVersion, when set, is the oldest running version this release may
	// replace (a release whose state format needs an intermediate one).
	MinVersion string `json:"min_version,omitempty"`
	// AllowDowngrade lets this release replace a newer version (a
	// deliberate rollback of the fleet); without it a board refuses.
	AllowDowngrade bool      `json:"allow_downgrade,omitempty"`
	Signed         time.Time `json:"signed"`
	// Expires: a board refuses the manifest afterwards, so an old,
	// vulnerable release cannot be replayed to it forever.
	Expires time.Time `json:"expires"`
	// KeyID names the signing key (KeyID).
	KeyID string `json:"key_id"`
}

// File is a manifest file: the manifest and its signature (base64 of the
// ed25519 signature over the canonical form).
type File struct {
	Manifest  Manifest `json:"manifest"`
	Signature string   `json:"signature"`
}

// Sentinel errors of the checks, each a reason a board reports.
var (
	ErrMalformed = errors.New("malformed manifest")
	ErrSignature = errors.New("bad signature")
	ErrExpired   = errors.New("manifest expired")
	ErrArch      = errors.New("wrong architecture")
	ErrDowngrade = errors.New("not newer than the running version")
	ErrTooOld    = errors.New("running version older than the release's minimum")
	ErrSize      = errors.New("size mismatch")
	ErrHash      = errors.New("SHA-256 mismatch")
)

// Reason is the short code of err's check for a state report
// ("bad_signature", "expired", ...), "error" for anything else.
func Reason(err error) string {
	for _, r := range []struct {
		err  error
		code string
	}{
		{ErrMalformed, "malformed"}, {ErrSignature, "bad_signature"}, {ErrExpired, "expired"},
		{ErrArch, "wrong_arch"}, {ErrDowngrade, "downgrade"}, {ErrTooOld, "too_old"},
		{ErrSize, "bad_size"}, {ErrHash, "bad_hash"},
	} {
		if errors.Is(err, r.err) {
			return r.code
		}
	}
	return "error"
}

// canonical returns the bytes signed for m.
func canonical(m Manifest) ([]byte, error) {
	m.Signed, m.Expires = m.Signed.UTC(), m.Expires.UTC()
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	return append([]byte(signingContext), b...), nil
}

// Sign fills in the signing fields of m (Format, Signed, KeyID; times
// truncated to the second, UTC) and returns the manifest file's bytes.
func Sign(m Manifest, sk ed25519.PrivateKey, now time.Time) ([]byte, error) {
	m.Format = Format
	m.Signed = now.UTC().Truncate(time.Second)
	m.Expires = m.Expires.UTC().Truncate(time.Second)
	m.KeyID = KeyID(sk.Public().(ed25519.PublicKey))
	if err := m.valid(); err != nil {
		return nil, err
	}
	c, err := canonical(m)
	if err != nil {
		return nil, err
	}
	f := File{Manifest: m, Signature: base64.StdEncoding.EncodeToString(ed25519.Sign(sk, c))}
	out, err := json.MarshalIndent(f, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(out, '\n'), nil
}

// valid checks what a signer must fill in.
func (m Manifest) valid() error {
	switch {
	case m.Format != Format:
		return fmt.Errorf("%w: format %d, this thermostat reads %d", ErrMalformed, m.Format, Format)
	case m.Binary == "" || strings.ContainsAny(m.Binary, "/\\") || strings.HasPrefix(m.Binary, "."):
		return fmt.Errorf("%w: binary %q is not a plain file name", ErrMalformed, m.Binary)
	case m.Size <= 0:
		return fmt.Errorf("%w: size %d", ErrMalformed, m.Size)
	case len(m.SHA256) != 64 || strings.ToLower(m.SHA256) != m.SHA256:
		return fmt.Errorf("%w: sha256 %q is not 64 lower-case hex digits", ErrMalformed, m.SHA256)
	case m.Arch == "":
		return fmt.Errorf("%w: no arch", ErrMalformed)
	case !m.Expires.After(m.Signed):
		return fmt.Errorf("%w: expires %s, not after it was signed (%s)", ErrMalformed, m.Expires.Format(time.RFC3339), m.Signed.Format(time.RFC3339))
	}
	if _, err := hex.DecodeString(m.SHA256); err != nil {
		return fmt.Errorf("%w: sha256: %w", ErrMalformed, err)
	}
	if _, err := ParseVersion(m.Version); err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if m.MinVersion != "" {
		if _, err := ParseVersion(m.MinVersion); err != nil {
			return fmt.Errorf("%w: min_version: %w", ErrMalformed, err)
		}
	}
	return nil
}

// Parse reads a manifest file without checking its signature. Unknown
// fields are refused: they would not be covered by the signature.
func Parse(data []byte) (File, error) {
	if len(data) > MaxManifestSize {
		return File{}, fmt.Errorf("%w: %d bytes, at most %d", ErrMalformed, len(data), MaxManifestSize)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var f File
	if err := dec.Decode(&f); err != nil {
		return File{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	if dec.More() {
		return File{}, fmt.Errorf("%w: data after the manifest", ErrMalformed)
	}
	return f, nil
}

// Verify parses a manifest file and checks that pk signed it and that it
// has not expired at now. It says nothing about whether the release suits
// a board: that is Check.
func Verify(data []byte, pk ed25519.PublicKey, now time.Time) (Manifest, error) {
	f, err := Parse(data)
	if err != nil {
		return Manifest{}, err
	}
	m := f.Manifest
	sig, err := base64.StdEncoding.DecodeString(f.Signature)
	if err != nil || len(sig) != ed25519.SignatureSize {
		return Manifest{}, fmt.Errorf("%w: the signature is not %d bytes of base64", ErrSignature, ed25519.SignatureSize)
	}
	c, err := canonical(m)
	if err != nil {
		return Manifest{}, err
	}
	if !ed25519.Verify(pk, c, sig) {
		if id := KeyID(pk); m.KeyID != id {
			return Manifest{}, fmt.Errorf("%w: signed by key %s, this thermostat trusts key %s", ErrSignature, m.KeyID, id)
		}
		return Manifest{}, fmt.Errorf("%w: the manifest was changed after it was signed, or not signed by key %s", ErrSignature, KeyID(pk))
	}
	if err := m.valid(); err != nil {
		return Manifest{}, err
	}
	if !now.Before(m.Expires) {
		return Manifest{}, fmt.Errorf("%w: it expired at %s (now %s); sign the release again", ErrExpired, m.Expires.Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	return m, nil
}

// Target is the board a release is checked against.
type Target struct {
	// Arch is the running binary's platform (HostArch).
	Arch string
	// Running is the running version.
	Running string
}

// Check reports why m cannot replace the running version on t: another
// architecture, not newer (unless AllowDowngrade; the same version is
// never installed again), or a running version older than MinVersion.
func Check(m Manifest, t Target) error {
	if m.Arch != t.Arch {
		return fmt.Errorf("%w: the release is for %s, this board runs %s", ErrArch, m.Arch, t.Arch)
	}
	nv, err := ParseVersion(m.Version)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	rv, err := ParseVersion(t.Running)
	if err != nil {
		return fmt.Errorf("%w: the running version cannot be compared: %w", ErrDowngrade, err)
	}
	switch c := nv.Compare(rv); {
	case c == 0:
		return fmt.Errorf("%w: %s is the running version", ErrDowngrade, m.Version)
	case c < 0 && !m.AllowDowngrade:
		return fmt.Errorf("%w: %s is older than the running %s and the manifest does not allow a downgrade", ErrDowngrade, m.Version, t.Running)
	}
	if m.MinVersion != "" {
		min, err := ParseVersion(m.MinVersion)
		if err != nil {
			return fmt.Errorf("%w: %w", ErrMalformed, err)
		}
		if rv.Compare(min) < 0 {
			return fmt.Errorf("%w: %s upgrades %s or later, this board runs %s", ErrTooOld, m.Version, m.MinVersion, t.Running)
		}
	}
	return nil
}

// CheckFile reports whether the file at path is the binary m describes:
// its size, then its SHA-256.
func CheckFile(m Manifest, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	if fi.Size() != m.Size {
		return fmt.Errorf("%w: %s is %d bytes, the manifest says %d", ErrSize, path, fi.Size(), m.Size)
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return fmt.Errorf("hash %s: %w", path, err)
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != m.SHA256 {
		return fmt.Errorf("%w: %s has %s, the manifest says %s", ErrHash, path, got, m.SHA256)
	}
	return nil
}
