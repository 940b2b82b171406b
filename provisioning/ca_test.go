package provisioning_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

func newCA(t *testing.T) *provisioning.CA {
	t.Helper()
	ca, err := provisioning.InitCA(t.TempDir(), provisioning.CAOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func parseCert(t *testing.T, certPEM []byte) *x509.Certificate {
	t.Helper()
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate: %q", certPEM)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

func pool(ca *provisioning.CA) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca.Cert)
	return p
}

func fileMode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestInitCA(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ca, err := provisioning.InitCA(dir, provisioning.CAOptions{CommonName: "Test CA"})
	if err != nil {
		t.Fatal(err)
	}
	if !ca.Cert.IsCA || ca.Cert.Subject.CommonName != "Test CA" || ca.Cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Errorf("CA certificate: IsCA=%v CN=%q usage=%v", ca.Cert.IsCA, ca.Cert.Subject.CommonName, ca.Cert.KeyUsage)
	}
	for file, want := range map[string]os.FileMode{provisioning.CAKeyFile: 0o600, provisioning.CACertFile: 0o644} {
		if got := fileMode(t, filepath.Join(dir, file)); got != want {
			t.Errorf("%s mode %v, want %v", file, got, want)
		}
	}
	if leftovers, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(leftovers) != 0 {
		t.Errorf("temporary files left: %v", leftovers)
	}

	// A second init refuses and changes nothing.
	before, _ := os.ReadFile(filepath.Join(dir, provisioning.CAKeyFile))
	if _, err := provisioning.InitCA(dir, provisioning.CAOptions{}); !errors.Is(err, provisioning.ErrCAExists) {
		t.Fatalf("second InitCA: %v, want ErrCAExists", err)
	}
	after, _ := os.ReadFile(filepath.Join(dir, provisioning.CAKeyFile))
	if string(before) != string(after) {
		t.Fatal("refused InitCA changed ca.key")
	}

	loaded, err := provisioning.LoadCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.Cert.Equal(ca.Cert) {
		t.Error("LoadCA returned another certificate")
	}
	// The loaded CA signs certificates that verify against the written ca.crt.
	certPEM, _, err := loaded.IssueClient("d1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := parseCert(t, certPEM).Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate from loaded CA: %v", err)
	}

	forced, err := provisioning.InitCA(dir, provisioning.CAOptions{Force: true})
	if err != nil {
		t.Fatalf("forced InitCA: %v", err)
	}
	if forced.Cert.Equal(ca.Cert) {
		t.Error("forced InitCA kept the old CA")
	}
}

// TestCANames: every CA has a name of its own, so a TLS error quoting the
// CA ("candidate authority certificate ...") tells fleets apart.
func TestCANames(t *testing.T) {
	a, b := newCA(t), newCA(t)
	for _, ca := range []*provisioning.CA{a, b} {
		if cn := ca.Cert.Subject.CommonName; !strings.HasPrefix(cn, provisioning.CANamePrefix+" ") || len(cn) != len(provisioning.CANamePrefix)+9 {
			t.Errorf("default CA name %q, want %q and 8 hex digits", cn, provisioning.CANamePrefix)
		}
	}
	if a.Cert.Subject.CommonName == b.Cert.Subject.CommonName {
		t.Errorf("two CAs both named %q", a.Cert.Subject.CommonName)
	}
	named, err := provisioning.InitCA(t.TempDir(), provisioning.CAOptions{Name: "Hotel Lindenhof"})
	if err != nil {
		t.Fatal(err)
	}
	if cn := named.Cert.Subject.CommonName; cn != "Thermofleet CA Hotel Lindenhof" {
		t.Errorf("named CA %q", cn)
	}
	for _, bad := range []string{strings.Repeat("x", 50), "a\nb", "a\x00b", "\xff"} {
		if _, err := provisioning.InitCA(t.TempDir(), provisioning.CAOptions{Name: bad}); err == nil {
			t.Errorf("InitCA with name %q succeeded", bad)
		}
	}
	// A CA made before names existed still loads and issues.
	old, err := provisioning.InitCA(t.TempDir(), provisioning.CAOptions{CommonName: "Thermofleet CA"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := provisioning.LoadCA(old.Dir); err != nil {
		t.Errorf("LoadCA of an unnamed CA: %v", err)
	}
}

func TestLoadCAErrors(t *testing.T) {
	a, b := newCA(t), newCA(t)
	mixed := t.TempDir()
	copyFile(t, filepath.Join(a.Dir, provisioning.CACertFile), filepath.Join(mixed, provisioning.CACertFile))
	copyFile(t, filepath.Join(b.Dir, provisioning.CAKeyFile), filepath.Join(mixed, provisioning.CAKeyFile))
	garbage := t.TempDir()
	os.WriteFile(filepath.Join(garbage, provisioning.CACertFile), []byte("not PEM"), 0o644)
	os.WriteFile(filepath.Join(garbage, provisioning.CAKeyFile), []byte("not PEM"), 0o600)
	tests := []struct {
		name, dir, want string
	}{
		{"missing", t.TempDir(), "pki init"},
		{"key of another CA", mixed, "does not belong"},
		{"garbage", garbage, "no PEM"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := provisioning.LoadCA(tt.dir)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("LoadCA: %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestIssueServer(t *testing.T) {
	ca := newCA(t)
	tests := []struct {
		name     string
		hosts    []string
		wantCN   string
		wantDNS  []string
		wantIPs  []string
		verifyAs []string // names a client may verify the certificate for
		wantErr  string
	}{
		{"one name", []string{"broker.lan"}, "broker.lan", []string{"broker.lan"}, nil, []string{"broker.lan"}, ""},
		{"names and IPs", []string{"localhost", "127.0.0.1", "::1", "mqtt.example.com"}, "localhost",
			[]string{"localhost", "mqtt.example.com"}, []string{"127.0.0.1", "::1"}, []string{"localhost", "127.0.0.1", "::1", "mqtt.example.com"}, ""},
		{"IP first", []string{"10.0.0.5"}, "10.0.0.5", nil, []string{"10.0.0.5"}, []string{"10.0.0.5"}, ""},
		{"bracketed IPv6", []string{"[fe80::1]"}, "fe80::1", nil, []string{"fe80::1"}, []string{"fe80::1"}, ""},
		{"duplicates once", []string{"a.lan", "A.lan", "127.0.0.1", "127.0.0.1"}, "a.lan", []string{"a.lan"}, []string{"127.0.0.1"}, []string{"a.lan"}, ""},
		{"wildcard", []string{"*.fleet.lan"}, "*.fleet.lan", []string{"*.fleet.lan"}, nil, []string{"b1.fleet.lan"}, ""},
		{"no host", nil, "", nil, nil, nil, "at least one"},
		{"port given", []string{"broker:8883"}, "", nil, nil, nil, "without a port"},
		{"space", []string{"bad name"}, "", nil, nil, nil, "invalid character"},
		{"empty label", []string{"a..b"}, "", nil, nil, nil, "invalid DNS name"},
		{"leading hyphen", []string{"-a.lan"}, "", nil, nil, nil, "start or end"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, keyPEM, err := ca.IssueServer(tt.hosts, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("IssueServer(%q): %v, want error containing %q", tt.hosts, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
				t.Fatalf("key does not match certificate: %v", err)
			}
			cert := parseCert(t, certPEM)
			if cert.Subject.CommonName != tt.wantCN {
				t.Errorf("CN %q, want %q", cert.Subject.CommonName, tt.wantCN)
			}
			if strings.Join(cert.DNSNames, ",") != strings.Join(tt.wantDNS, ",") {
				t.Errorf("DNS SANs %q, want %q", cert.DNSNames, tt.wantDNS)
			}
			var ips []string
			for _, ip := range cert.IPAddresses {
				ips = append(ips, ip.String())
			}
			if strings.Join(ips, ",") != strings.Join(tt.wantIPs, ",") {
				t.Errorf("IP SANs %q, want %q", ips, tt.wantIPs)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || cert.IsCA {
				t.Errorf("ExtKeyUsage %v IsCA %v, want server auth only", cert.ExtKeyUsage, cert.IsCA)
			}
			for _, name := range tt.verifyAs {
				if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: name}); err != nil {
					t.Errorf("verify as %s: %v", name, err)
				}
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), DNSName: "other.example"}); err == nil {
				t.Error("certificate verified for a host it was not issued for")
			}
		})
	}
}

func TestIssueClient(t *testing.T) {
	ca := newCA(t)
	tests := []struct {
		cn      string
		wantErr bool
	}{
		{"d1", false},
		{"controller", false},
		{"controller-east", false},
		{"controller-", true},
		{"controller-East", true},
		{"Controller", true},
		{"0", false},
		{"kitchen_north-2", false},
		{strings.Repeat("a", 63), false},
		{strings.Repeat("a", 64), true},
		{"", true},
		{"D1", true},
		{"-d1", true},
		{"_d1", true},
		{"d1/cmd", true},
		{"d+", true},
		{"d#", true},
		{"dé", true},
		{"d 1", true},
	}
	for _, tt := range tests {
		t.Run(tt.cn, func(t *testing.T) {
			certPEM, keyPEM, err := ca.IssueClient(tt.cn, nil)
			if (err != nil) != tt.wantErr {
				t.Fatalf("IssueClient(%q): %v, want error %v", tt.cn, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			cert := parseCert(t, certPEM)
			if cert.Subject.CommonName != tt.cn {
				t.Errorf("CN %q, want %q", cert.Subject.CommonName, tt.cn)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth {
				t.Errorf("ExtKeyUsage %v, want client auth only", cert.ExtKeyUsage)
			}
			if len(cert.DNSNames)+len(cert.IPAddresses) != 0 {
				t.Errorf("client certificate has SANs %v %v", cert.DNSNames, cert.IPAddresses)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify: %v", err)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca)}); err == nil {
				t.Error("client certificate verified as a server certificate")
			}
			pair, err := tls.X509KeyPair(certPEM, keyPEM)
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := pair.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
				t.Errorf("key %T, want ECDSA P-256", pair.PrivateKey)
			}
		})
	}
}

func TestIssueOptions(t *testing.T) {
	ca := newCA(t)
	nb := time.Now().Add(-48 * time.Hour).Truncate(time.Second)
	certPEM, _, err := ca.IssueClient("d1", &provisioning.IssueOptions{NotBefore: nb, Validity: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	cert := parseCert(t, certPEM)
	if !cert.NotBefore.Equal(nb) || !cert.NotAfter.Equal(nb.Add(time.Hour)) {
		t.Errorf("validity %v..%v, want %v..%v", cert.NotBefore, cert.NotAfter, nb, nb.Add(time.Hour))
	}
}

// TestDefaultLifetimes: devices 90 days (they renew themselves), server
// and controller a year, the CA ten years.
func TestDefaultLifetimes(t *testing.T) {
	ca := newCA(t)
	day := 24 * time.Hour
	if got := ca.Cert.NotAfter.Sub(ca.Cert.NotBefore); got < 10*365*day || got > 10*365*day+2*time.Hour {
		t.Errorf("CA lifetime %v, want 10 years", got)
	}
	csrPEM, _, err := provisioning.NewCSR("d2")
	if err != nil {
		t.Fatal(err)
	}
	signed, _, err := ca.SignCSR(csrPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(f func() ([]byte, []byte, error)) []byte {
		c, _, err := f()
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	for _, tc := range []struct {
		name string
		pem  []byte
		want time.Duration
	}{
		{"device", issue(func() ([]byte, []byte, error) { return ca.IssueClient("d1", nil) }), 90 * day},
		{"signed request", signed, 90 * day},
		{"controller", issue(func() ([]byte, []byte, error) { return ca.IssueClient("controller", nil) }), 365 * day},
		{"server", issue(func() ([]byte, []byte, error) { return ca.IssueServer([]string{"broker.local"}, nil) }), 365 * day},
	} {
		cert := parseCert(t, tc.pem)
		if got := cert.NotAfter.Sub(cert.NotBefore); got != tc.want {
			t.Errorf("%s: lifetime %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCheckDeviceID(t *testing.T) {
	tests := []struct {
		id      string
		wantErr error // nil: valid; errAny: any error
	}{
		{"d1", nil},
		{"a_b-c", nil},
		{"controller", protocol.ErrReservedID},
		{"controller-east", protocol.ErrReservedID},
		{"controllers", nil},
		{"Controller", errAny},
		{"D1", errAny},
		{"d1/cmd", errAny},
		{"", errAny},
		{"../etc", errAny},
	}
	for _, tt := range tests {
		err := protocol.CheckDeviceID(tt.id)
		switch {
		case tt.wantErr == nil && err != nil, tt.wantErr != nil && err == nil:
			t.Errorf("protocol.CheckDeviceID(%q) = %v, want error %v", tt.id, err, tt.wantErr)
		case tt.wantErr != nil && tt.wantErr != errAny && !errors.Is(err, tt.wantErr):
			t.Errorf("protocol.CheckDeviceID(%q) = %v, want %v", tt.id, err, tt.wantErr)
		}
	}
}

var errAny = errors.New("any error")

var oidCN = asn1.ObjectIdentifier{2, 5, 4, 3}

func rawSubject(t *testing.T, rdns pkix.RDNSequence) []byte {
	t.Helper()
	der, err := asn1.Marshal(rdns)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// csrFor makes a request directly with x509, for requests NewCSR would not make.
func csrFor(t *testing.T, tmpl *x509.CertificateRequest, key any) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

func TestSignCSR(t *testing.T) {
	ca := newCA(t)
	csrPEM, keyPEM, err := provisioning.NewCSR("d7")
	if err != nil {
		t.Fatal(err)
	}
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	smallRSA, _ := rsa.GenerateKey(rand.Reader, 1024)
	evil, _ := url.Parse("spiffe://evil")
	greedy := csrFor(t, &x509.CertificateRequest{
		Subject:        pkix.Name{CommonName: "d8", Organization: []string{"Evil"}},
		DNSNames:       []string{"broker.lan"},
		IPAddresses:    []net.IP{net.ParseIP("127.0.0.1")},
		EmailAddresses: []string{"x@example.com"},
		URIs:           []*url.URL{evil},
	}, ecKey)
	// A request whose CN was changed after signing: the signature no longer matches.
	block, _ := pem.Decode(csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d9"}}, ecKey))
	der := block.Bytes
	if i := strings.Index(string(der), "d9"); i < 0 {
		t.Fatal("CN not found in the request")
	} else {
		der = append([]byte(nil), der...)
		der[i+1] = '8'
	}
	tampered := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	tests := []struct {
		name    string
		csr     []byte
		wantID  string
		wantErr string
	}{
		{"NewCSR", csrPEM, "d7", ""},
		{"SANs and extensions ignored", greedy, "d8", ""},
		{"controller", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "controller"}}, ecKey), "", "pki controller"},
		{"controller-<name>", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "controller-east"}}, ecKey), "", "pki controller"},
		// Mosquitto would take the first CN (controller), Go the last (d3).
		{"two CNs", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{ExtraNames: []pkix.AttributeTypeAndValue{
			{Type: oidCN, Value: "controller"}, {Type: oidCN, Value: "d3"},
		}}}, ecKey), "", "2 Common Names"},
		{"two CNs in one RDN", csrFor(t, &x509.CertificateRequest{RawSubject: rawSubject(t, pkix.RDNSequence{{
			{Type: oidCN, Value: "d3"}, {Type: oidCN, Value: "controller"},
		}})}, ecKey), "", "2 Common Names"},
		{"capitals", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "D3"}}, ecKey), "", "invalid id"},
		{"invalid id", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "D9/x"}}, ecKey), "", "invalid id"},
		{"no CN", csrFor(t, &x509.CertificateRequest{}, ecKey), "", "invalid id"},
		{"small RSA key", csrFor(t, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "d9"}}, smallRSA), "", "too small"},
		{"tampered", tampered, "", "bad signature"},
		{"not PEM", []byte("hello"), "", "no PEM"},
		{"a certificate", ca.CertPEM, "", "no PEM"},
		{"too large", []byte(strings.Repeat("A", 70<<10)), "", "too large"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			certPEM, id, err := ca.SignCSR(tt.csr, nil)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SignCSR: %v, want error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if id != tt.wantID {
				t.Errorf("id %q, want %q", id, tt.wantID)
			}
			cert := parseCert(t, certPEM)
			if cert.Subject.CommonName != tt.wantID || len(cert.Subject.Organization) != 0 {
				t.Errorf("subject %v, want CN=%s only", cert.Subject, tt.wantID)
			}
			if len(cert.DNSNames)+len(cert.IPAddresses)+len(cert.EmailAddresses)+len(cert.URIs) != 0 {
				t.Errorf("signed certificate carries SANs from the request: %v %v %v %v", cert.DNSNames, cert.IPAddresses, cert.EmailAddresses, cert.URIs)
			}
			if len(cert.ExtKeyUsage) != 1 || cert.ExtKeyUsage[0] != x509.ExtKeyUsageClientAuth || cert.IsCA {
				t.Errorf("ExtKeyUsage %v IsCA %v, want a client certificate", cert.ExtKeyUsage, cert.IsCA)
			}
			if _, err := cert.Verify(x509.VerifyOptions{Roots: pool(ca), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
	// The certificate signed for NewCSR's request pairs with NewCSR's key.
	certPEM, _, err := ca.SignCSR(csrPEM, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Errorf("signed certificate does not match the device's key: %v", err)
	}
}

func TestNewCSRRejectsBadIDs(t *testing.T) {
	for _, id := range []string{"", "controller", "Bad", "a/b"} {
		if _, _, err := provisioning.NewCSR(id); err == nil {
			t.Errorf("NewCSR(%q) succeeded", id)
		}
	}
}

func TestCommonNameAndDeviceID(t *testing.T) {
	ca := newCA(t)
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	d1, _, _ := ca.IssueClient("d1", nil)
	ctl, _, _ := ca.IssueClient("controller", nil)
	tests := []struct {
		name, file     string
		wantCN, wantID string
		cnErr, idErr   bool
	}{
		{"device", write("d1.crt", d1), "d1", "d1", false, false},
		{"controller", write("ctl.crt", ctl), "controller", "", false, true},
		{"garbage", write("bad.crt", []byte("x")), "", "", true, true},
		{"missing", filepath.Join(dir, "none.crt"), "", "", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cn, err := provisioning.CommonName(tt.file)
			if (err != nil) != tt.cnErr || cn != tt.wantCN {
				t.Errorf("CommonName = %q, %v; want %q, error %v", cn, err, tt.wantCN, tt.cnErr)
			}
			id, err := provisioning.DeviceID(tt.file)
			if (err != nil) != tt.idErr || id != tt.wantID {
				t.Errorf("DeviceID = %q, %v; want %q, error %v", id, err, tt.wantID, tt.idErr)
			}
		})
	}
}

// TestTLSConfigs runs a mutual TLS handshake in memory with the configs the
// binaries use: the server learns the client's CN, the client verifies the
// server by name, and a client of another CA is refused.
func TestTLSConfigs(t *testing.T) {
	ca, foreign := newCA(t), newCA(t)
	dir := t.TempDir()
	n := 0
	issue := func(certPEM, keyPEM []byte, err error) (string, string) {
		if err != nil {
			t.Fatal(err)
		}
		n++
		c, k := filepath.Join(dir, fmt.Sprint(n, ".crt")), filepath.Join(dir, fmt.Sprint(n, ".key"))
		if err := provisioning.WriteCertKey(c, k, certPEM, keyPEM); err != nil {
			t.Fatal(err)
		}
		if m := fileMode(t, k); m != 0o600 {
			t.Errorf("%s mode %v, want 0600", k, m)
		}
		return c, k
	}
	srvCert, srvKey := issue(ca.IssueServer([]string{"broker.lan"}, nil))
	d1Cert, d1Key := issue(ca.IssueClient("d1", nil))
	fCert, fKey := issue(foreign.IssueClient("d1", nil))
	serverConf, err := provisioning.LoadServerTLS(ca.CertFile(), srvCert, srvKey)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, certFile, keyFile, serverName string
		wantCN                              string
		wantErr                             bool
	}{
		{"device", d1Cert, d1Key, "broker.lan", "d1", false},
		{"wrong server name", d1Cert, d1Key, "other.lan", "", true},
		{"foreign client", fCert, fKey, "broker.lan", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clientConf, err := provisioning.LoadClientTLS(ca.CertFile(), tt.certFile, tt.keyFile)
			if err != nil {
				t.Fatal(err)
			}
			clientConf.ServerName = tt.serverName
			// Loopback TCP, not net.Pipe: a TLS 1.3 client finishes before the
			// server has checked its certificate, and the server's alert must
			// not block on an unbuffered pipe.
			l, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			type result struct {
				cn  string
				err error
			}
			srvc := make(chan result, 1)
			go func() {
				c, err := l.Accept()
				if err != nil {
					srvc <- result{err: err}
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				srv := tls.Server(c, serverConf)
				if err := srv.Handshake(); err != nil {
					srvc <- result{err: err}
					return
				}
				cn, err := provisioning.PeerCommonName(srv.ConnectionState())
				srv.Write([]byte("x")) // lets the client's read finish
				srvc <- result{cn, err}
			}()
			conn, err := net.Dial("tcp", l.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(10 * time.Second))
			cli := tls.Client(conn, clientConf)
			cliErr := cli.Handshake()
			if cliErr == nil {
				// A refused client certificate shows up on the first read.
				_, cliErr = cli.Read(make([]byte, 1))
			}
			cli.Close()
			res := <-srvc
			if tt.wantErr {
				if res.err == nil && cliErr == nil {
					t.Fatal("handshake succeeded")
				}
				return
			}
			if res.err != nil || cliErr != nil {
				t.Fatalf("handshake: server %v, client %v", res.err, cliErr)
			}
			if res.cn != tt.wantCN {
				t.Errorf("PeerCommonName = %q, want %q", res.cn, tt.wantCN)
			}
		})
	}
}
