package renew

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/alert"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// fakeLink answers each request with what answer makes of it, as the
// controller would, and records what the renewer puts in use.
type fakeLink struct {
	r         *Renewer
	answer    func(csr *x509.CertificateRequest) protocol.CertReply
	mu        sync.Mutex
	installed []tls.Certificate
	reconnect int
}

func (l *fakeLink) Connected() bool { return true }
func (l *fakeLink) Publish(_ context.Context, topic string, payload []byte, _ byte, _ bool) error {
	req, err := protocol.DecodeCertRequest(payload)
	if err != nil {
		return err
	}
	block, _ := pem.Decode([]byte(req.CSR))
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return err
	}
	rep := l.answer(csr)
	rep.V, rep.Nonce = protocol.Version, req.Nonce
	b, _ := rep.Encode()
	go l.r.Handle(transport.Message{Topic: l.r.Topic(), Payload: b})
	return nil
}
func (l *fakeLink) SetCertificate(c tls.Certificate) {
	l.mu.Lock()
	l.installed = append(l.installed, c)
	l.mu.Unlock()
}
func (l *fakeLink) Reconnect() { l.mu.Lock(); l.reconnect++; l.mu.Unlock() }

// TestRenewOnceChecksTheAnswer: the thermostat installs only a certificate
// of its CA, for its id and the key it just made; anything else leaves the
// files as they were.
func TestRenewOnceChecksTheAnswer(t *testing.T) {
	pki := testenv.NewPKI(t)
	sign := func(ca *provisioning.CA, id string, useKey bool) func(*x509.CertificateRequest) protocol.CertReply {
		return func(csr *x509.CertificateRequest) protocol.CertReply {
			if !useKey {
				c, _, _ := ca.IssueClient(id, nil)
				return protocol.CertReply{Cert: string(c)}
			}
			certPEM, _, err := ca.SignRenewal(csr, id, nil)
			if err != nil {
				return protocol.CertReply{Error: err.Error()}
			}
			return protocol.CertReply{Cert: string(certPEM)}
		}
	}
	for _, tc := range []struct {
		name   string
		answer func(*x509.CertificateRequest) protocol.CertReply
		want   string // "" for installed
	}{
		{"good", sign(pki.CA, "d1", true), ""},
		{"refused", func(*x509.CertificateRequest) protocol.CertReply { return protocol.CertReply{Error: "revoked"} }, "refused"},
		{"another key", sign(pki.CA, "d1", false), "not a certificate of the new key"},
		{"foreign CA", sign(pki.Foreign, "d1", true), "does not chain"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			certFile, keyFile := filepath.Join(dir, "device.crt"), filepath.Join(dir, "device.key")
			c, k, _ := pki.CA.IssueClient("d1", nil)
			if err := provisioning.WriteCertKey(certFile, keyFile, c, k); err != nil {
				t.Fatal(err)
			}
			r, err := New(Options{ID: "d1", CAFile: pki.CAFile, CertFile: certFile, KeyFile: keyFile, RenewAt: 2.0 / 3})
			if err != nil {
				t.Fatal(err)
			}
			link := &fakeLink{r: r, answer: tc.answer}
			err = r.renewOnce(context.Background(), link)
			pair, _, lerr := provisioning.LoadKeyPair(certFile, keyFile)
			if lerr != nil {
				t.Fatalf("files after the attempt: %v", lerr)
			}
			if tc.want == "" {
				if err != nil || len(link.installed) != 1 || link.reconnect != 1 || string(pair.Certificate[0]) == string(c) {
					t.Fatalf("renewal: %v, installed %d, reconnects %d", err, len(link.installed), link.reconnect)
				}
				if !r.NotAfter().Equal(pair.Leaf.NotAfter) {
					t.Error("NotAfter is not the new certificate's")
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err %v, want %q", err, tc.want)
			}
			if len(link.installed) != 0 || readFileString(t, certFile) != string(c) {
				t.Error("a refused answer was installed")
			}
		})
	}
}

// TestAlertWhenRenewalFails: a certificate close to its end that cannot be
// renewed raises cert_expiring; it is cleared by a renewal.
func TestAlertWhenRenewalFails(t *testing.T) {
	pki := testenv.NewPKI(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "device.crt"), filepath.Join(dir, "device.key")
	// 4 s of life, 3.5 s gone: past the alert point (a quarter of the life before the end).
	c, k, _ := pki.CA.IssueClient("d1", &provisioning.IssueOptions{NotBefore: time.Now().Add(-3500 * time.Millisecond), Validity: 4 * time.Second})
	if err := provisioning.WriteCertKey(certFile, keyFile, c, k); err != nil {
		t.Fatal(err)
	}
	alerts := alert.New(nil)
	r, err := New(Options{ID: "d1", CAFile: pki.CAFile, CertFile: certFile, KeyFile: keyFile, RenewAt: 0.5, Alerts: alerts})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	refuse := true
	link := &fakeLink{r: r, answer: func(csr *x509.CertificateRequest) protocol.CertReply {
		mu.Lock()
		defer mu.Unlock()
		if refuse {
			return protocol.CertReply{Error: "controller busy"}
		}
		certPEM, _, err := pki.CA.SignRenewal(csr, "d1", &provisioning.IssueOptions{Validity: time.Hour})
		if err != nil {
			return protocol.CertReply{Error: err.Error()}
		}
		return protocol.CertReply{Cert: string(certPEM)}
	}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.Run(ctx, link)
	testenv.WaitFor(t, "cert_expiring raised", func() bool { return alerts.Has(protocol.AlertCertExpiring) })
	mu.Lock()
	refuse = false
	mu.Unlock()
	testenv.WaitFor(t, "renewed and the alert cleared", func() bool {
		return !alerts.Has(protocol.AlertCertExpiring) && time.Until(r.NotAfter()) > 30*time.Minute
	})
}

func readFileString(t *testing.T, path string) string { return string(readFile(t, path)) }
