package provisioning_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"testing"

	"github.com/thermofleet/thermo/provisioning"
)

// TestSignRenewal: the controller signs a request for the requester's own
// id with a board's key, and refuses another id, a CA, other names, extra
// subject fields and weak keys.
func TestSignRenewal(t *testing.T) {
	ca := newCA(t)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	rsa1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	rsa2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	caTrue, _ := asn1.Marshal(struct{ IsCA bool }{true})
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		tmpl x509.CertificateRequest
		ok   bool
	}{
		{"own id P-256", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, true},
		{"P-384", p384, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, true},
		{"Ed25519", ed, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, true},
		{"RSA 2048", rsa2048, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, true},
		{"another id", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d2"}}, false},
		{"controller", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "controller"}}, false},
		{"CA:TRUE", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"},
			ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: caTrue}}}, false},
		{"subjectAltName", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}, DNSNames: []string{"broker.lan"}}, false},
		{"other subject field", p256, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1", Organization: []string{"x"}}}, false},
		{"RSA 1024", rsa1024, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, false},
		{"P-224", p224, x509.CertificateRequest{Subject: pkix.Name{CommonName: "d1"}}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			der, err := x509.CreateCertificateRequest(rand.Reader, &tc.tmpl, tc.key)
			if err != nil {
				t.Fatal(err)
			}
			csr, err := provisioning.ParseCSR(der)
			if err != nil {
				t.Fatal(err)
			}
			certPEM, cert, err := ca.SignRenewal(csr, "d1", nil)
			if !tc.ok {
				if !errors.Is(err, provisioning.ErrRenewalRefused) {
					t.Fatalf("signed (%v), want refused", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(certPEM) == 0 || cert.Subject.CommonName != "d1" || cert.IsCA || len(cert.DNSNames) != 0 {
				t.Errorf("certificate CN %q CA %v DNS %v", cert.Subject.CommonName, cert.IsCA, cert.DNSNames)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.key.Public()) {
				t.Error("the certificate is not for the request's key")
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}
