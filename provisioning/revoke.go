package provisioning

// Revocation: the list of certificates the fleet no longer trusts, a file
// (RevokedFile) in the controller's data directory, or without one given
// in the PKI directory beside ca.crt, so that `controllerlite pki revoke`
// works whether or not the controller runs: a running controller reads
// both places (its --data-dir and the directory of its --ca) again when
// they change (RevocationWatch), its embedded broker refuses and cuts what
// they name, and its renewal refuses them. For an external Mosquitto the
// lists become a signed CRL (WriteCRL).

import (
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/protocol"
)

// RevokedFile is the revocation list's name inside the controller's data
// directory.
const RevokedFile = "revoked.json"

// CRLFile is the CRL's name inside the PKI directory, the file the
// generated Mosquitto configuration's crlfile names.
const CRLFile = "crl.pem"

// IssuedDir, inside the controller's data directory, keeps a copy of every
// certificate the controller issued by renewal (IssuedDir/ID/SERIAL.crt), so
// that revoking a device revokes every serial it was given.
const IssuedDir = "issued"

// DefaultCRLValidity is how long a CRL written by WriteCRL is current
// (its NextUpdate). Mosquitto does not refuse a CRL past its NextUpdate;
// other verifiers may.
const DefaultCRLValidity = 30 * 24 * time.Hour

// Revocation is one entry of the revocation list: a whole device id (every
// certificate with that CN, now and later) or one serial number.
type Revocation struct {
	// ID, when set, revokes every certificate whose CN is ID.
	ID string `json:"id,omitempty"`
	// Serials are the serial numbers (lower-case hex) revoked: the one
	// given, or for ID every serial of it known when it was revoked.
	Serials []string  `json:"serials,omitempty"`
	Reason  string    `json:"reason,omitempty"`
	Time    time.Time `json:"time"`
}

// Revocations is the revocation list.
type Revocations struct {
	Entries []Revocation `json:"revoked"`
}

// serialRE: an argument of 16 or more hex digits (colons allowed, as
// openssl prints them) is a serial number, anything else a device id.
var serialRE = regexp.MustCompile(`^[0-9a-fA-F]{2}(:?[0-9a-fA-F]{2}){7,}$`)

// IsSerial reports whether arg of `pki revoke` names a serial number.
func IsSerial(arg string) bool { return serialRE.MatchString(arg) }

// SerialHex is the list's spelling of a serial number.
func SerialHex(n *big.Int) string { return hex.EncodeToString(n.Bytes()) }

// normalizeSerial turns "0A:1B:..." (openssl's spelling) into SerialHex's.
func normalizeSerial(s string) (string, error) {
	n, ok := new(big.Int).SetString(strings.ReplaceAll(s, ":", ""), 16)
	if !ok {
		return "", fmt.Errorf("serial %q is not hexadecimal", s)
	}
	return SerialHex(n), nil
}

// LoadRevocationsFrom reads the lists of dirs ("" skipped) as one; a
// missing file is an empty list.
func LoadRevocationsFrom(dirs ...string) (*Revocations, error) {
	all := &Revocations{}
	seen := map[string]bool{}
	for _, d := range dirs {
		if d == "" || seen[filepath.Clean(d)] {
			continue
		}
		seen[filepath.Clean(d)] = true
		l, err := LoadRevocations(d)
		if err != nil {
			return nil, err
		}
		all.Entries = append(all.Entries, l.Entries...)
	}
	return all, nil
}

// LoadRevocations reads the list in dataDir; a missing file is an empty list.
func LoadRevocations(dataDir string) (*Revocations, error) {
	path := filepath.Join(dataDir, RevokedFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return &Revocations{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("revocation list: %w", err)
	}
	var r Revocations
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("revocation list %s: %w (fix or restore the file: nothing is trusted less until it reads)", path, err)
	}
	return &r, nil
}

// revokeMu serialises the read-modify-write of Revoke within a process
// (the API's delete and the watcher); the CLI is another process, and
// atomicfile keeps each write whole.
var revokeMu sync.Mutex

// Revoke adds r to the list in dataDir (created 0700 if missing), unless it
// is already there; for an ID it gathers the serials known for it (in
// dataDir's IssuedDir and in pkiDir's device bundle, pkiDir may be empty).
// It returns the entry as recorded and whether it was new.
func Revoke(dataDir, pkiDir string, r Revocation) (Revocation, bool, error) {
	revokeMu.Lock()
	defer revokeMu.Unlock()
	if r.ID == "" && len(r.Serials) != 1 {
		return r, false, errors.New("revoke: give a device id or one serial")
	}
	if r.ID != "" {
		if err := protocol.CheckDeviceID(r.ID); err != nil {
			return r, false, fmt.Errorf("revoke: %w", err)
		}
		r.Serials = knownSerials(dataDir, pkiDir, r.ID)
	} else {
		s, err := normalizeSerial(r.Serials[0])
		if err != nil {
			return r, false, fmt.Errorf("revoke: %w", err)
		}
		r.Serials = []string{s}
	}
	if r.Time.IsZero() {
		r.Time = time.Now().UTC()
	}
	list, err := LoadRevocations(dataDir)
	if err != nil {
		return r, false, err
	}
	for i, e := range list.Entries {
		if (r.ID != "" && e.ID == r.ID) || (r.ID == "" && e.ID == "" && slices.Equal(e.Serials, r.Serials)) {
			// Already revoked: take in serials issued since.
			merged := append(slices.Clone(e.Serials), r.Serials...)
			slices.Sort(merged)
			merged = slices.Compact(merged)
			if slices.Equal(merged, e.Serials) {
				return e, false, nil
			}
			list.Entries[i].Serials = merged
			return list.Entries[i], false, writeRevocations(dataDir, list)
		}
	}
	list.Entries = append(list.Entries, r)
	return r, true, writeRevocations(dataDir, list)
}

func writeRevocations(dataDir string, list *Revocations) error {
	b, err := json.MarshalIndent(list, "", "  ")
	if err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	if err := atomicfile.WriteFile(filepath.Join(dataDir, RevokedFile), append(b, '\n'), CertFileMode); err != nil {
		return fmt.Errorf("revocation list: %w", err)
	}
	return nil
}

// knownSerials are the serials of id's certificates this side can find:
// those the controller issued (dataDir/issued/ID) and the PKI's bundle.
func knownSerials(dataDir, pkiDir, id string) []string {
	var out []string
	add := func(path string) {
		b, err := os.ReadFile(path)
		if err != nil {
			return
		}
		if c, err := parseCertPEM(b); err == nil && c.Subject.CommonName == id {
			out = append(out, SerialHex(c.SerialNumber))
		}
	}
	if dataDir != "" {
		files, _ := filepath.Glob(filepath.Join(dataDir, IssuedDir, id, "*.crt"))
		for _, f := range files {
			add(f)
		}
	}
	if pkiDir != "" {
		add(filepath.Join(pkiDir, DevicesDir, id, DeviceCertFile))
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// RecordIssued keeps a copy of a certificate the controller issued, so a
// later revocation of its id finds its serial.
func RecordIssued(dataDir string, cert *x509.Certificate) error {
	dir := filepath.Join(dataDir, IssuedDir, cert.Subject.CommonName)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	p := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})
	if err := atomicfile.WriteFile(filepath.Join(dir, SerialHex(cert.SerialNumber)+".crt"), p, CertFileMode); err != nil {
		return fmt.Errorf("record issued certificate: %w", err)
	}
	return nil
}

// RevokedID reports whether every certificate of id is revoked.
func (l *Revocations) RevokedID(id string) (Revocation, bool) {
	for _, e := range l.Entries {
		if e.ID != "" && e.ID == id {
			return e, true
		}
	}
	return Revocation{}, false
}

// Check returns the entry that revokes cert, if any: its CN revoked as a
// device id, or its serial.
func (l *Revocations) Check(cert *x509.Certificate) (Revocation, bool) {
	if e, ok := l.RevokedID(cert.Subject.CommonName); ok {
		return e, true
	}
	s := SerialHex(cert.SerialNumber)
	for _, e := range l.Entries {
		if slices.Contains(e.Serials, s) {
			return e, true
		}
	}
	return Revocation{}, false
}

// CRL returns a CRL of every revoked serial, signed by ca, current for
// validity (DefaultCRLValidity when 0). Its number, which must grow from
// one CRL to the next, is the time in seconds.
func (ca *CA) CRL(l *Revocations, now time.Time, validity time.Duration) ([]byte, error) {
	if validity <= 0 {
		validity = DefaultCRLValidity
	}
	var entries []x509.RevocationListEntry
	seen := map[string]bool{}
	for _, e := range l.Entries {
		for _, s := range e.Serials {
			if seen[s] {
				continue
			}
			seen[s] = true
			n, ok := new(big.Int).SetString(s, 16)
			if !ok {
				return nil, fmt.Errorf("CRL: bad serial %q in the revocation list", s)
			}
			entries = append(entries, x509.RevocationListEntry{SerialNumber: n, RevocationTime: e.Time})
		}
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number:                    big.NewInt(now.Unix()),
		ThisUpdate:                now.Add(-backdate),
		NextUpdate:                now.Add(validity),
		RevokedCertificateEntries: entries,
	}, ca.Cert, ca.key)
	if err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}

// WriteCRL writes the CRL of the lists in dirs (none: an empty CRL) to
// path (0644), signed by ca.
func WriteCRL(ca *CA, path string, validity time.Duration, dirs ...string) (*Revocations, error) {
	list, err := LoadRevocationsFrom(dirs...)
	if err != nil {
		return nil, err
	}
	crl, err := ca.CRL(list, time.Now(), validity)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.WriteFile(path, crl, CertFileMode); err != nil {
		return nil, fmt.Errorf("CRL: %w", err)
	}
	return list, nil
}
