package provisioning

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"os"

	"github.com/thermofleet/thermo/protocol"
)

// ErrRenewalRefused is wrapped by every refusal of SignRenewal: the
// request is not one the fleet signs (the answer says why).
var ErrRenewalRefused = errors.New("renewal refused")

// oidBasicConstraints is the X.509 basicConstraints extension.
var oidBasicConstraints = asn1.ObjectIdentifier{2, 5, 29, 19}

// LoadSigner loads a CA from its certificate file (the first certificate
// of caFile) and its key file, for `controllerlite serve --signing-key`:
// the controller signs renewals with it.
func LoadSigner(caFile, keyFile string) (*CA, error) {
	certPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("signing key: %s: %w", caFile, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("signing key: %s is not a CA certificate", caFile)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		return nil, fmt.Errorf("signing key: %w", err)
	}
	key, err := parseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("signing key: %s: %w", keyFile, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("signing key: %s is not the key of the CA %s (--ca)", keyFile, caFile)
	}
	return &CA{Cert: cert, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), key: key}, nil
}

// ParseCSR reads a PKCS#10 request, PEM or DER.
func ParseCSR(data []byte) (*x509.CertificateRequest, error) {
	if len(data) > maxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes is too large for a certificate request", ErrRenewalRefused, len(data))
	}
	if block, _ := pem.Decode(data); block != nil {
		if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("%w: PEM block %q is not a CERTIFICATE REQUEST", ErrRenewalRefused, block.Type)
		}
		data = block.Bytes
	}
	csr, err := x509.ParseCertificateRequest(data)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrRenewalRefused, err)
	}
	return csr, nil
}

// CheckRenewal holds a renewal request of device id to the fleet's rules:
// a good signature; a subject of exactly one Common Name, id, and nothing
// else (no other subject field, no subjectAltName of any kind); no
// basicConstraints CA:TRUE asked for; a key of ECDSA P-256 or P-384,
// Ed25519, or RSA of 2048 bits or more.
func CheckRenewal(csr *x509.CertificateRequest, id string) error {
	if err := csr.CheckSignature(); err != nil {
		return fmt.Errorf("%w: bad signature: %w", ErrRenewalRefused, err)
	}
	cn, err := singleCommonName(csr.Subject)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrRenewalRefused, err)
	}
	if cn != id {
		return fmt.Errorf("%w: the request is for %q, the requester is %q", ErrRenewalRefused, cn, id)
	}
	if err := protocol.CheckDeviceID(id); err != nil {
		return fmt.Errorf("%w: %w", ErrRenewalRefused, err)
	}
	if len(csr.Subject.Names) != 1 {
		return fmt.Errorf("%w: the subject must hold the Common Name only", ErrRenewalRefused)
	}
	if len(csr.DNSNames)+len(csr.EmailAddresses)+len(csr.IPAddresses)+len(csr.URIs) > 0 {
		return fmt.Errorf("%w: the request asks for other names (subjectAltName)", ErrRenewalRefused)
	}
	for _, ext := range csr.Extensions {
		if !ext.Id.Equal(oidBasicConstraints) {
			continue
		}
		var bc struct {
			IsCA       bool `asn1:"optional"`
			MaxPathLen int  `asn1:"optional,default:-1"`
		}
		if _, err := asn1.Unmarshal(ext.Value, &bc); err != nil || bc.IsCA {
			return fmt.Errorf("%w: the request asks for a CA certificate (basicConstraints CA:TRUE)", ErrRenewalRefused)
		}
	}
	if err := checkRenewalKey(csr.PublicKey); err != nil {
		return fmt.Errorf("%w: %w", ErrRenewalRefused, err)
	}
	return nil
}

// checkRenewalKey: the keys a board may make, as checkPublicKey, and
// Ed25519.
func checkRenewalKey(pub any) error {
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return nil
	case *ecdsa.PublicKey:
		if k.Curve == elliptic.P256() || k.Curve == elliptic.P384() {
			return nil
		}
		return fmt.Errorf("ECDSA curve %s not accepted (use P-256 or P-384)", k.Curve.Params().Name)
	case *rsa.PublicKey:
		if k.N.BitLen() >= 2048 {
			return nil
		}
		return fmt.Errorf("RSA key of %d bits is too weak (use ECDSA P-256, or RSA of 2048 bits or more)", k.N.BitLen())
	}
	return fmt.Errorf("public key type %T not accepted (use ECDSA P-256)", pub)
}

// SignRenewal issues a new device certificate for a request CheckRenewal
// accepts, with the request's key, for opts' lifetime (default
// DefaultDeviceValidity). It returns the certificate, PEM and parsed.
func (ca *CA) SignRenewal(csr *x509.CertificateRequest, id string, opts *IssueOptions) ([]byte, *x509.Certificate, error) {
	if err := CheckRenewal(csr, id); err != nil {
		return nil, nil, err
	}
	certPEM, _, err := ca.issue(clientTemplate(id), csr.PublicKey, withValidity(opts, DefaultDeviceValidity))
	if err != nil {
		return nil, nil, fmt.Errorf("sign renewal of %s: %w", id, err)
	}
	cert, err := parseCertPEM(certPEM)
	if err != nil {
		return nil, nil, fmt.Errorf("sign renewal of %s: %w", id, err)
	}
	return certPEM, cert, nil
}
