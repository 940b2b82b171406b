package provisioning

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/thermofleet/thermo/protocol"
)

// File names of the CA inside its directory.
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// Default lifetimes. A device renews its own certificate over the fleet's
// connection at two thirds of its life (docs/certificates.md), so a stolen
// board's certificate is worth little for long; the broker's and the
// controller's certificates are renewed by a person, once a year; the CA
// outlives them all.
const (
	DefaultCAValidity     = 10 * 365 * 24 * time.Hour
	DefaultDeviceValidity = 90 * 24 * time.Hour
	DefaultServerValidity = 365 * 24 * time.Hour
	// DefaultControllerValidity is the life of a controller's client
	// certificate.
	DefaultControllerValidity = DefaultServerValidity
	// backdate is subtracted from NotBefore: a board without a real-time
	// clock may run a little behind the machine that issued its certificate.
	backdate = time.Hour
)

// ErrCAExists is returned by InitCA when the directory already holds a CA.
var ErrCAExists = errors.New("a CA already exists")

// CANamePrefix starts the Common Name of every CA InitCA makes.
const CANamePrefix = "Thermofleet CA"

// maxCommonName is the longest Common Name X.509 allows (ub-common-name).
const maxCommonName = 64

// CAOptions configures InitCA. The zero value gives the defaults.
type CAOptions struct {
	// CommonName of the CA certificate; default CANamePrefix followed by
	// Name. It is what TLS errors quote ("signed by unknown authority
	// (... candidate authority certificate "Thermofleet CA kitchen")"), so
	// each fleet's CA has a name of its own.
	CommonName string
	// Name tells this fleet's CA from others in that Common Name; default
	// eight hex digits of the SHA-256 of the CA's public key.
	Name string
	// Validity of the CA certificate; default DefaultCAValidity.
	Validity time.Duration
	// Force replaces an existing CA. Every certificate it issued stops
	// being trusted by anything that takes the new ca.crt.
	Force bool
}

// IssueOptions tunes a certificate being issued. A nil *IssueOptions, like
// the zero value, gives the defaults.
type IssueOptions struct {
	// Validity of the certificate; default DefaultDeviceValidity for a
	// device, DefaultServerValidity for a server, DefaultControllerValidity
	// for a controller.
	Validity time.Duration
	// NotBefore is when the certificate starts being valid; default an hour
	// ago (clock skew). Tests set it to make expired certificates.
	NotBefore time.Time
}

// CA is a certificate authority loaded in memory with its private key.
type CA struct {
	// Dir is the directory holding ca.crt and ca.key.
	Dir string
	// Cert is the CA certificate.
	Cert *x509.Certificate
	// CertPEM is the PEM encoding of Cert, as written to ca.crt.
	CertPEM []byte

	key crypto.Signer
}

// CertFile is the path of the CA certificate.
func (ca *CA) CertFile() string { return filepath.Join(ca.Dir, CACertFile) }

// InitCA creates a CA in dir (created 0755 if missing): ca.key (0600) and
// ca.crt (0644). It refuses with ErrCAExists when either file is already
// there, unless opts.Force is set.
func InitCA(dir string, opts CAOptions) (*CA, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if !opts.Force && (exists(certFile) || exists(keyFile)) {
		return nil, fmt.Errorf("init CA in %s: %w (use --force to replace it and invalidate every certificate it issued)", dir, ErrCAExists)
	}
	if opts.Validity <= 0 {
		opts.Validity = DefaultCAValidity
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if opts.CommonName == "" {
		if opts.CommonName, err = caCommonName(opts.Name, key.Public()); err != nil {
			return nil, fmt.Errorf("init CA: %w", err)
		}
	}
	serial, err := newSerial()
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: opts.CommonName},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(opts.Validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("init CA: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	if err := WriteCertKey(certFile, keyFile, certPEM, keyPEM); err != nil {
		return nil, fmt.Errorf("init CA: %w", err)
	}
	return &CA{Dir: dir, Cert: cert, CertPEM: certPEM, key: key}, nil
}

// caCommonName is CANamePrefix and name, or when name is empty a short
// hash of the CA's key: every "Thermofleet CA" looked the same in an error,
// so a device given another fleet's ca.crt could not tell which it had.
func caCommonName(name string, pub crypto.PublicKey) (string, error) {
	if name = strings.TrimSpace(name); name == "" {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return "", fmt.Errorf("CA name: %w", err)
		}
		sum := sha256.Sum256(der)
		name = hex.EncodeToString(sum[:4])
	}
	cn := CANamePrefix + " " + name
	if len(cn) > maxCommonName {
		return "", fmt.Errorf("CA name %q is too long: at most %d characters", name, maxCommonName-len(CANamePrefix)-1)
	}
	for _, r := range name {
		if r < ' ' || r == 0x7f || r == utf8.RuneError {
			return "", fmt.Errorf("CA name %q: control or invalid characters are not allowed", name)
		}
	}
	return cn, nil
}

// LoadCA reads the CA in dir and checks that its key matches its
// certificate and that the certificate is a CA.
func LoadCA(dir string) (*CA, error) {
	certFile, keyFile := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	certPEM, err := os.ReadFile(certFile)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("load CA: %w (run `controllerlite pki init --dir %s` first)", err, dir)
		}
		return nil, fmt.Errorf("load CA: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", certFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("load CA: %s is not a CA certificate", certFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("load CA: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("load CA: %s: %w", keyFile, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("load CA: %s does not belong to %s", keyFile, certFile)
	}
	return &CA{Dir: dir, Cert: cert, CertPEM: certPEM, key: key}, nil
}

// IssueServer issues a broker certificate for hosts: each IP address becomes
// an IP subjectAltName, each other name a DNS subjectAltName (Go clients
// ignore the Common Name), and the first host is also the Common Name. It
// returns the certificate and a new private key, PEM-encoded.
func (ca *CA) IssueServer(hosts []string, opts *IssueOptions) (certPEM, keyPEM []byte, err error) {
	if len(hosts) == 0 {
		return nil, nil, errors.New("issue server certificate: at least one host name or IP address is needed")
	}
	tmpl := &x509.Certificate{ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	seen := map[string]bool{}
	for _, h := range hosts {
		h = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(h), "["), "]")
		if ip := net.ParseIP(h); ip != nil {
			if !seen[ip.String()] {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			}
			seen[ip.String()] = true
			continue
		}
		if err := validateHostName(h); err != nil {
			return nil, nil, fmt.Errorf("issue server certificate: %w", err)
		}
		if !seen[strings.ToLower(h)] {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
		seen[strings.ToLower(h)] = true
	}
	// Lower case: host names are case-insensitive, and no certificate of
	// the fleet carries a Common Name with capitals (see validateClientCN).
	if cn := strings.ToLower(strings.Trim(hosts[0], "[] ")); len(cn) <= maxCommonName {
		tmpl.Subject.CommonName = cn
	}
	certPEM, keyPEM, err = ca.issue(tmpl, nil, withValidity(opts, DefaultServerValidity))
	if err != nil {
		return nil, nil, fmt.Errorf("issue server certificate: %w", err)
	}
	return certPEM, keyPEM, nil
}

// IssueClient issues a client certificate with Common Name cn: a device id
// (protocol.CheckDeviceID) or a controller's name (protocol.CheckControllerID); any
// other name is refused, capitals and '/' included, since the broker's ACL
// is written in terms of it. It returns the certificate and a new private key,
// PEM-encoded.
func (ca *CA) IssueClient(cn string, opts *IssueOptions) (certPEM, keyPEM []byte, err error) {
	if err := validateClientCN(cn); err != nil {
		return nil, nil, fmt.Errorf("issue client certificate: %w", err)
	}
	def := DefaultDeviceValidity
	if protocol.IsControllerID(cn) {
		def = DefaultControllerValidity
	}
	certPEM, keyPEM, err = ca.issue(clientTemplate(cn), nil, withValidity(opts, def))
	if err != nil {
		return nil, nil, fmt.Errorf("issue client certificate for %s: %w", cn, err)
	}
	return certPEM, keyPEM, nil
}

// maxCSRSize bounds what SignCSR reads; a real request is under 1 KiB.
const maxCSRSize = 64 << 10

// SignCSR issues a device certificate for a certificate request made on the
// device (NewCSR, or openssl), so the device's key never leaves it. It checks
// the request's signature and that its subject has exactly one Common Name,
// a valid device id (not a controller's: see singleCommonName for why two
// are refused), and issues a plain client certificate for that id: any
// subjectAltNames, extensions or other subject fields the request asks for
// are ignored. It returns the certificate and the device id.
func (ca *CA) SignCSR(csrPEM []byte, opts *IssueOptions) (certPEM []byte, id string, err error) {
	if len(csrPEM) > maxCSRSize {
		return nil, "", fmt.Errorf("sign request: %d bytes is too large for a certificate request", len(csrPEM))
	}
	block, _ := pem.Decode(csrPEM)
	if block == nil || (block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST") {
		return nil, "", errors.New("sign request: no PEM \"CERTIFICATE REQUEST\" block found")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, "", fmt.Errorf("sign request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, "", fmt.Errorf("sign request: bad signature: %w", err)
	}
	if err := checkPublicKey(csr.PublicKey); err != nil {
		return nil, "", fmt.Errorf("sign request: %w", err)
	}
	if id, err = singleCommonName(csr.Subject); err != nil {
		return nil, "", fmt.Errorf("sign request: %w", err)
	}
	if err := protocol.CheckDeviceID(id); err != nil {
		if errors.Is(err, protocol.ErrReservedID) {
			return nil, "", fmt.Errorf("sign request: %w; issue the controller's certificate with `controllerlite pki controller`", err)
		}
		return nil, "", fmt.Errorf("sign request: Common Name: %w", err)
	}
	certPEM, _, err = ca.issue(clientTemplate(id), csr.PublicKey, withValidity(opts, DefaultDeviceValidity))
	if err != nil {
		return nil, "", fmt.Errorf("sign request for %s: %w", id, err)
	}
	return certPEM, id, nil
}

// NewCSR makes a private key and a certificate request for device id, to be
// run on the device: the request goes to `controllerlite pki sign`, the key
// stays. Both are PEM-encoded.
func NewCSR(id string) (csrPEM, keyPEM []byte, err error) {
	if err := protocol.CheckDeviceID(id); err != nil {
		return nil, nil, fmt.Errorf("new certificate request: %w", err)
	}
	key, keyPEM, err := newKey()
	if err != nil {
		return nil, nil, fmt.Errorf("new certificate request: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: id},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("new certificate request: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEM, nil
}

func clientTemplate(cn string) *x509.Certificate {
	return &x509.Certificate{
		Subject:     pkix.Name{CommonName: cn},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// withValidity is opts with def as its validity when it gives none.
func withValidity(opts *IssueOptions, def time.Duration) *IssueOptions {
	var o IssueOptions
	if opts != nil {
		o = *opts
	}
	if o.Validity <= 0 {
		o.Validity = def
	}
	return &o
}

// issue signs tmpl. With pub nil a new key is made and returned as keyPEM.
func (ca *CA) issue(tmpl *x509.Certificate, pub crypto.PublicKey, opts *IssueOptions) (certPEM, keyPEM []byte, err error) {
	var o IssueOptions
	if opts != nil {
		o = *opts
	}
	if o.Validity <= 0 {
		return nil, nil, errors.New("no validity given")
	}
	if o.NotBefore.IsZero() {
		// A short-lived certificate (a test's, a fleet's that renews
		// every few minutes) would be half over: backdate a tenth of it.
		o.NotBefore = time.Now().Add(-min(backdate, o.Validity/10))
	}
	if pub == nil {
		var key crypto.Signer
		key, keyPEM, err = newKey()
		if err != nil {
			return nil, nil, err
		}
		pub = key.Public()
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = o.NotBefore
	tmpl.NotAfter = o.NotBefore.Add(o.Validity)
	if tmpl.NotAfter.After(ca.Cert.NotAfter) {
		// A leaf must not outlive its CA; verifiers would reject the chain then anyway.
		tmpl.NotAfter = ca.Cert.NotAfter
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	tmpl.BasicConstraintsValid = true
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM, nil
}

func newKey() (crypto.Signer, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("encode key: %w", err)
	}
	return key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// checkPublicKey accepts the keys a board may reasonably make: ECDSA P-256
// or P-384, RSA of 2048 bits or more.
func checkPublicKey(pub crypto.PublicKey) error {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s not accepted (use P-256)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() >= 2048 {
			return nil
		}
		return fmt.Errorf("RSA key of %d bits is too small (use ECDSA P-256, or RSA of 2048 bits or more)", k.N.BitLen())
	default:
		return fmt.Errorf("public key type %T not accepted (use ECDSA P-256)", pub)
	}
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ak, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && ak.Equal(b)
}

func parseCertPEM(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block found")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

func parseKeyPEM(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key block found")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("parse private key: %w", err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("private key type %T cannot sign", key)
		}
		return signer, nil
	}
}

// validateHostName checks a DNS name for a subjectAltName; a leading "*."
// wildcard is allowed.
func validateHostName(h string) error {
	if h == "" {
		return errors.New("empty host name")
	}
	if strings.Contains(h, ":") {
		return fmt.Errorf("host %q: give a host name or IP address without a port or scheme", h)
	}
	name := strings.TrimPrefix(h, "*.")
	if len(name) > 253 {
		return fmt.Errorf("host %q: name too long", h)
	}
	for _, label := range strings.Split(strings.TrimSuffix(name, "."), ".") {
		if label == "" || len(label) > 63 {
			return fmt.Errorf("host %q: invalid DNS name", h)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
				return fmt.Errorf("host %q: invalid character %q in DNS name", h, r)
			}
		}
		if label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("host %q: a DNS label cannot start or end with '-'", h)
		}
	}
	return nil
}
