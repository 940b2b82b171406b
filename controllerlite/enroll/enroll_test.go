package enroll

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/renewal"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// TestSimpleReenroll: the endpoint renews a device whose certificate is
// valid or ended within the grace, for its own id; it refuses one past
// the grace, revoked, of another CA, or asking for another id; the
// answer is a certs-only PKCS#7 of a certificate for the request's key.
func TestSimpleReenroll(t *testing.T) {
	pki := testenv.NewPKI(t)
	dataDir := t.TempDir()
	if _, _, err := provisioning.Revoke(dataDir, "", provisioning.Revocation{ID: "stolen"}); err != nil {
		t.Fatal(err)
	}
	revs, err := provisioning.NewRevocationWatch(nil, dataDir)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := provisioning.LoadSigner(pki.CAFile, pki.CA.Dir+"/"+provisioning.CAKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := renewal.New(renewal.Options{Signer: signer, Revocations: revs, DataDir: dataDir})
	if err != nil {
		t.Fatal(err)
	}
	pair, _, err := provisioning.LoadKeyPair(pki.ServerCert, pki.ServerKey)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := Start(Options{Listen: "127.0.0.1:0", CAFile: pki.CAFile, Renewal: svc, Grace: 10 * time.Minute,
		Certificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return &pair, nil }})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	url := "https://localhost:" + strings.Split(srv.Addr().String(), ":")[1] + PathSimpleReenroll
	roots, _ := provisioning.LoadCertPool(pki.CAFile)

	issue := func(ca *provisioning.CA, id string, ended time.Duration) tls.Certificate {
		c, k, err := ca.IssueClient(id, &provisioning.IssueOptions{NotBefore: time.Now().Add(-ended - 20*time.Minute), Validity: 20 * time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		p, err := tls.X509KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	valid := func(ca *provisioning.CA, id string) tls.Certificate {
		c, k, _ := ca.IssueClient(id, nil)
		p, _ := tls.X509KeyPair(c, k)
		return p
	}
	for _, tc := range []struct {
		name   string
		client tls.Certificate
		cn     string
		ok     bool
	}{
		{"valid", valid(pki.CA, "d1"), "d1", true},
		{"ended within the grace", issue(pki.CA, "d2", 5*time.Minute), "d2", true},
		{"ended past the grace", issue(pki.CA, "d3", 15*time.Minute), "d3", false},
		{"revoked", issue(pki.CA, "stolen", 5*time.Minute), "stolen", false},
		{"another CA", issue(pki.Foreign, "d4", 5*time.Minute), "d4", false},
		{"request for another id", issue(pki.CA, "d5", 5*time.Minute), "d6", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: tc.cn}}, key)
			client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{tc.client}}}}
			defer client.CloseIdleConnections()
			resp, err := client.Post(url, "application/pkcs10", strings.NewReader(base64.StdEncoding.EncodeToString(der)))
			if err != nil {
				if tc.ok {
					t.Fatal(err)
				}
				return // refused in the handshake
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(resp.Body)
			if !tc.ok {
				if resp.StatusCode == http.StatusOK {
					t.Fatalf("renewed: %s", body)
				}
				return
			}
			if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/pkcs7-mime") {
				t.Fatalf("%s %s: %s", resp.Status, resp.Header.Get("Content-Type"), body)
			}
			p7, err := base64.StdEncoding.DecodeString(string(bytes.TrimSpace(body)))
			if err != nil {
				t.Fatal(err)
			}
			certs, err := provisioning.DecodeCertsOnly(p7)
			if err != nil || len(certs) != 1 {
				t.Fatalf("%d certificates, %v", len(certs), err)
			}
			if certs[0].Subject.CommonName != tc.cn || !certs[0].PublicKey.(*ecdsa.PublicKey).Equal(&key.PublicKey) || time.Until(certs[0].NotAfter) < 80*24*time.Hour {
				t.Errorf("certificate CN %q not_after %v", certs[0].Subject.CommonName, certs[0].NotAfter)
			}
		})
	}
}
