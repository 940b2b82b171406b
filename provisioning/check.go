package provisioning

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// Use is what a certificate given to a binary is for; CheckCertificates
// holds it to that use's rules.
type Use int

const (
	// UseServer is the embedded broker's server certificate
	// (`controllerlite serve` without --broker).
	UseServer Use = iota + 1
	// UseController is the controller's client certificate
	// (`controllerlite serve --broker`).
	UseController
	// UseDevice is a thermostat's client certificate (`thermostat run`).
	UseDevice
)

func (u Use) String() string {
	switch u {
	case UseServer:
		return "the broker's server certificate"
	case UseController:
		return "the controller's client certificate"
	case UseDevice:
		return "the device's client certificate"
	}
	return fmt.Sprintf("Use(%d)", int(u))
}

// CertCheck names the certificate files an installer gave a binary and
// what they are for.
type CertCheck struct {
	// CAFile is --ca: the fleet CA certificate (several CAs may be
	// concatenated, e.g. while moving to a new CA).
	CAFile string
	// CertFile and KeyFile are --cert and --key.
	CertFile, KeyFile string
	// Use is what CertFile is for.
	Use Use
	// Listen, for UseServer, is the address the broker listens on
	// (--listen). When its host is a name or a specific IP address, the
	// certificate must be valid for it, or (for an IP address) for a name
	// that resolves to it. Empty or an unspecified address (":8883",
	// "0.0.0.0:8883") checks only that the certificate names some host.
	Listen string
	// Now is when the certificates must be valid. Zero skips the check of
	// validity periods: a board without a real-time clock may start with
	// its clock years behind, and a thermostat must keep heating then.
	Now time.Time
	// LookupHost resolves a certificate's DNS names for an IP Listen;
	// net.DefaultResolver.LookupHost when nil.
	LookupHost func(ctx context.Context, host string) ([]string, error)
}

// lookupTimeout bounds the name resolution of an IP Listen check.
const lookupTimeout = 3 * time.Second

// CheckCertificates checks, before a binary writes anything, the mistakes
// an installer makes with certificates, which would otherwise surface late
// (a TLS error on every connection, logged on the other side) or never:
// that the CA file holds CA certificates only; that the key belongs to the
// certificate; that the certificate is for c.Use (serverAuth and the host
// it is reached by for a server; clientAuth and a valid device id or
// controller name as its single Common Name for a client); that it was
// issued by a CA of the CA file; and, when c.Now is set, that both are
// valid now. Every error names the file at fault and says what to give
// instead. It returns the certificate.
func CheckCertificates(c CertCheck) (*x509.Certificate, error) {
	cas, err := readCAFile(c.CAFile, c.Now)
	if err != nil {
		return nil, err
	}
	chain, err := readCertChain(c.CertFile)
	if err != nil {
		return nil, fmt.Errorf("%w (%s)", err, remedy(c.Use))
	}
	leaf := chain[0]
	if err := checkKeyFile(c.KeyFile, c.CertFile, leaf); err != nil {
		return nil, err
	}
	if leaf.IsCA {
		return nil, fmt.Errorf("certificate %s (CN %q) is a CA certificate, not %s: %s", c.CertFile, leaf.Subject.CommonName, c.Use, remedy(c.Use))
	}
	switch c.Use {
	case UseServer:
		err = checkServerCert(c, leaf)
	case UseController, UseDevice:
		err = checkClientCert(c, leaf)
	default:
		err = fmt.Errorf("check certificates: unknown use %d", int(c.Use))
	}
	if err != nil {
		return nil, err
	}
	if err := checkIssuer(c, cas, chain); err != nil {
		return nil, err
	}
	if !c.Now.IsZero() {
		if err := checkValidity("certificate", c.CertFile, leaf, c.Now, remedy(c.Use)); err != nil {
			return nil, err
		}
		if err := verifyChain(c, cas, chain); err != nil {
			return nil, err
		}
	}
	return leaf, nil
}

// remedy says where the right certificate for u comes from.
func remedy(u Use) string {
	switch u {
	case UseServer:
		return "give the broker's certificate made by `controllerlite pki server --host NAME` (server.crt, with server.key)"
	case UseController:
		return "give the controller's certificate made by `controllerlite pki controller` (controller.crt, with controller.key)"
	default:
		return "give the device's certificate made by `controllerlite pki device ID` or `controllerlite pki sign` (device.crt, with device.key)"
	}
}

// readCAFile reads every certificate of the CA file and refuses one that
// is not a CA: the usual mistake is a device's or the server's certificate
// given as --ca, which TLS reports only as "unknown authority" on the
// other side of every connection.
func readCAFile(caFile string, now time.Time) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w (give the fleet's ca.crt, written by `controllerlite pki init`)", err)
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("CA certificate %s: %w (give the fleet's ca.crt, written by `controllerlite pki init`)", caFile, err)
	}
	for _, ca := range certs {
		if !ca.BasicConstraintsValid || !ca.IsCA {
			return nil, fmt.Errorf("CA certificate %s: %q is not a CA certificate but %s: give the fleet's ca.crt (written by `controllerlite pki init`, copied into every device bundle)",
				caFile, ca.Subject.CommonName, describeLeaf(ca))
		}
		if ca.KeyUsage != 0 && ca.KeyUsage&x509.KeyUsageCertSign == 0 {
			return nil, fmt.Errorf("CA certificate %s: %q may not sign certificates (no keyCertSign usage): give the fleet's ca.crt, written by `controllerlite pki init`", caFile, ca.Subject.CommonName)
		}
		if !now.IsZero() {
			if err := checkValidity("CA certificate", caFile, ca, now, "make a new CA (`controllerlite pki init --force`) and new certificates from it"); err != nil {
				return nil, err
			}
		}
	}
	return certs, nil
}

// describeLeaf guesses what a certificate that is not a CA was made for,
// to name the mix-up.
func describeLeaf(cert *x509.Certificate) string {
	switch {
	case hasUsage(cert, x509.ExtKeyUsageServerAuth) && len(cert.ExtKeyUsage) > 0 && !hasUsage(cert, x509.ExtKeyUsageClientAuth):
		return "a server certificate"
	case protocol.CheckControllerID(cert.Subject.CommonName) == nil:
		return "a controller's certificate"
	case protocol.CheckDeviceID(cert.Subject.CommonName) == nil:
		return "a device's certificate"
	}
	return "a leaf certificate"
}

// readCertChain reads the certificate file: the certificate first, then
// any intermediate CA certificates.
func readCertChain(certFile string) ([]*x509.Certificate, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("certificate: %w", err)
	}
	certs, err := parseCertsPEM(data)
	if err != nil {
		return nil, fmt.Errorf("certificate %s: %w", certFile, err)
	}
	return certs, nil
}

// checkKeyFile reads the key and checks it belongs to leaf: a key from
// another pair fails every TLS handshake with an error about the peer.
func checkKeyFile(keyFile, certFile string, leaf *x509.Certificate) error {
	data, err := os.ReadFile(keyFile)
	if err != nil {
		return fmt.Errorf("key: %w (give the private key issued with certificate %s)", err, certFile)
	}
	key, err := parseKeyPEM(data)
	if err != nil {
		return fmt.Errorf("key %s: %w (give the private key issued with certificate %s, the .key file written beside it)", keyFile, err, certFile)
	}
	if !publicKeysEqual(key.Public(), leaf.PublicKey) {
		return fmt.Errorf("key %s does not belong to certificate %s (CN %q): give the key issued with it (the .key file written beside the .crt)",
			keyFile, certFile, leaf.Subject.CommonName)
	}
	return nil
}

// checkServerCert: serverAuth, at least one subjectAltName (Go clients
// ignore the Common Name), and the host it is reached by.
func checkServerCert(c CertCheck, leaf *x509.Certificate) error {
	if !allowsUsage(leaf, x509.ExtKeyUsageServerAuth) {
		return fmt.Errorf("certificate %s (CN %q) is not a server certificate but %s (its extended key usage lacks serverAuth): %s",
			c.CertFile, leaf.Subject.CommonName, describeLeaf(leaf), remedy(UseServer))
	}
	if len(leaf.DNSNames) == 0 && len(leaf.IPAddresses) == 0 {
		return fmt.Errorf("certificate %s names no host in its subjectAltName (clients ignore its CN %q): issue one with `controllerlite pki server --host NAME --force`",
			c.CertFile, leaf.Subject.CommonName)
	}
	if c.Listen == "" {
		return nil
	}
	host, _, err := net.SplitHostPort(c.Listen)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", c.Listen, err)
	}
	ip := net.ParseIP(host)
	if host == "" || ip != nil && ip.IsUnspecified() {
		return nil
	}
	if leaf.VerifyHostname(host) == nil {
		return nil
	}
	if ip != nil && resolvesTo(c, leaf.DNSNames, ip) {
		return nil
	}
	return fmt.Errorf("certificate %s is valid for %s, not for %s (the listen address): clients that reach the broker there refuse it; issue one with `controllerlite pki server --host %s --host OTHER_NAME --force`, or listen on an address it names",
		c.CertFile, strings.Join(certHosts(leaf), ", "), host, host)
}

// resolvesTo reports whether one of names resolves to ip: clients may dial
// the broker by a name of its certificate that leads to the listen address.
// A name that cannot be resolved now (no network yet at boot) is given the
// benefit of the doubt: only a certificate whose names all resolve
// elsewhere is refused.
func resolvesTo(c CertCheck, names []string, ip net.IP) bool {
	lookup := c.LookupHost
	if lookup == nil {
		lookup = net.DefaultResolver.LookupHost
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupTimeout)
	defer cancel()
	for _, name := range names {
		if strings.HasPrefix(name, "*.") {
			continue
		}
		addrs, err := lookup(ctx, name)
		if err != nil {
			var dnsErr *net.DNSError
			if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
				continue
			}
			return true
		}
		for _, a := range addrs {
			if got := net.ParseIP(a); got != nil && got.Equal(ip) {
				return true
			}
		}
	}
	return false
}

func certHosts(cert *x509.Certificate) []string {
	hosts := slices.Clone(cert.DNSNames)
	for _, ip := range cert.IPAddresses {
		hosts = append(hosts, ip.String())
	}
	return hosts
}

// checkClientCert: clientAuth, and one Common Name that is a valid device
// id or controller name, since the brokers take it as the client's
// identity.
func checkClientCert(c CertCheck, leaf *x509.Certificate) error {
	if !allowsUsage(leaf, x509.ExtKeyUsageClientAuth) {
		return fmt.Errorf("certificate %s (CN %q) is not a client certificate but %s (its extended key usage lacks clientAuth): %s",
			c.CertFile, leaf.Subject.CommonName, describeLeaf(leaf), remedy(c.Use))
	}
	cn, err := singleCommonName(leaf.Subject)
	if err != nil {
		return fmt.Errorf("certificate %s: %w: %s", c.CertFile, err, remedy(c.Use))
	}
	if c.Use == UseController {
		if err := protocol.CheckControllerID(cn); err != nil {
			return fmt.Errorf("certificate %s has CN %q: with --broker, --cert must be the controller's client certificate (CN %q): %w; %s",
				c.CertFile, cn, ControllerCN, err, remedy(UseController))
		}
		return nil
	}
	if err := protocol.CheckDeviceID(cn); err != nil {
		return fmt.Errorf("certificate %s: its CN is the device id: %w; %s", c.CertFile, err, remedy(UseDevice))
	}
	return nil
}

// checkIssuer checks that a CA of the CA file signed the certificate
// (through any intermediates in the certificate file), by signature alone:
// a board's clock may be wrong (see CertCheck.Now).
func checkIssuer(c CertCheck, cas []*x509.Certificate, chain []*x509.Certificate) error {
	top := chain[len(chain)-1]
	for i := 0; i+1 < len(chain); i++ {
		if chain[i].CheckSignatureFrom(chain[i+1]) != nil {
			top = chain[i]
			break
		}
	}
	signed := false
	for _, ca := range cas {
		if top.CheckSignatureFrom(ca) == nil {
			signed = true
			break
		}
	}
	if !signed {
		var names []string
		for _, ca := range cas {
			names = append(names, fmt.Sprintf("%q", ca.Subject.CommonName))
		}
		return fmt.Errorf("certificate %s (CN %q) was issued by %q, not by the CA in %s (%s): give the ca.crt of the fleet that issued it, or issue the certificate again from this CA",
			c.CertFile, chain[0].Subject.CommonName, top.Issuer.CommonName, c.CAFile, strings.Join(names, ", "))
	}
	return nil
}

// verifyChain verifies the chain at c.Now for the certificate's use, as
// the TLS peer will: whatever the checks above did not name.
func verifyChain(c CertCheck, cas []*x509.Certificate, chain []*x509.Certificate) error {
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, ca := range cas {
		roots.AddCert(ca)
	}
	for _, ic := range chain[1:] {
		inter.AddCert(ic)
	}
	usage := x509.ExtKeyUsageClientAuth
	if c.Use == UseServer {
		usage = x509.ExtKeyUsageServerAuth
	}
	if _, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: c.Now, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
		return fmt.Errorf("certificate %s does not verify against %s: %w", c.CertFile, c.CAFile, err)
	}
	return nil
}

// checkValidity checks cert's validity period at now; fix says how to
// replace an expired one.
func checkValidity(what, file string, cert *x509.Certificate, now time.Time, fix string) error {
	switch {
	case now.Before(cert.NotBefore):
		return fmt.Errorf("%s %s (CN %q) is not valid before %s, and this machine's clock says %s: set the clock right",
			what, file, cert.Subject.CommonName, cert.NotBefore.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	case now.After(cert.NotAfter):
		return fmt.Errorf("%s %s (CN %q) expired on %s: %s", what, file, cert.Subject.CommonName, cert.NotAfter.UTC().Format(time.RFC3339), fix)
	}
	return nil
}

// allowsUsage reports whether TLS accepts cert for usage: no extended key
// usage at all means any.
func allowsUsage(cert *x509.Certificate, usage x509.ExtKeyUsage) bool {
	return len(cert.ExtKeyUsage) == 0 && len(cert.UnknownExtKeyUsage) == 0 ||
		hasUsage(cert, usage) || hasUsage(cert, x509.ExtKeyUsageAny)
}

func hasUsage(cert *x509.Certificate, usage x509.ExtKeyUsage) bool {
	return slices.Contains(cert.ExtKeyUsage, usage)
}

// parseCertsPEM returns every CERTIFICATE block of data, at least one.
func parseCertsPEM(data []byte) ([]*x509.Certificate, error) {
	var certs []*x509.Certificate
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			continue
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		certs = append(certs, cert)
	}
	if len(certs) == 0 {
		return nil, errors.New("no PEM CERTIFICATE block found")
	}
	return certs, nil
}
