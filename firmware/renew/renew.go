// Package renew is the thermostat's side of certificate renewal
// (docs/certificates.md): at a fraction of its certificate's life (two
// thirds by default, a little earlier by a random jitter so that a fleet
// provisioned in one day does not renew in one minute) it makes a new key
// on the board, sends a certificate request on its own csr topic, checks
// the controller's answer (it chains to the device's CA, names the
// device, certifies the new key), swaps key and certificate on disk
// (Install: a kill at any point leaves a usable pair) and reconnects with
// them. A failed attempt is retried with backoff; while the certificate
// is close to its end the cert_expiring alert is up. A device whose
// certificate expired while it was off renews at the controller's
// enrolment endpoint instead (enroll.go), authenticated by the expired
// certificate.
package renew

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/internal/alert"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
	"github.com/thermofleet/thermo/transport"
)

// Defaults.
const (
	// AlertBefore: cert_expiring is raised this long before the end of a
	// certificate that could not be renewed (a quarter of its life for a
	// shorter-lived one).
	AlertBefore = 14 * 24 * time.Hour
	// ReplyTimeout bounds the wait for the controller's answer.
	ReplyTimeout = 30 * time.Second
	// maxBackoff caps the wait between failed attempts.
	maxBackoff = time.Hour
)

// Link is what the renewer needs of the broker connection.
type Link interface {
	Connected() bool
	Publish(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error
	// SetCertificate and Reconnect put a new certificate in use.
	SetCertificate(tls.Certificate)
	Reconnect()
}

// Options configure a Renewer.
type Options struct {
	ID, Root                  string
	CAFile, CertFile, KeyFile string
	// RenewAt is the fraction of the life at which to renew (0.1..0.95).
	RenewAt float64
	// EnrollURL is the enrolment endpoint, "" for none.
	EnrollURL string
	Alerts    *alert.Set
	Logger    *slog.Logger
}

// Renewer renews the device's certificate. Create it with New, route the
// messages of Topic to Handle, Run it.
type Renewer struct {
	o       Options
	log     *slog.Logger
	cur     atomic.Pointer[x509.Certificate]
	replies chan protocol.CertReply
}

// New reads the certificate in use.
func New(o Options) (*Renewer, error) {
	if o.RenewAt <= 0 || o.RenewAt >= 1 {
		return nil, fmt.Errorf("renew: renew-at %v is not a fraction of the life", o.RenewAt)
	}
	if o.Root == "" {
		o.Root = protocol.DefaultRoot
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Alerts == nil {
		o.Alerts = alert.New(nil)
	}
	pair, _, err := provisioning.LoadKeyPair(o.CertFile, o.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("renew: %w", err)
	}
	r := &Renewer{o: o, log: o.Logger.With("component", "renew"), replies: make(chan protocol.CertReply, 4)}
	r.cur.Store(pair.Leaf)
	r.checkWritable()
	return r, nil
}

// checkWritable warns at start when the key's directory cannot take the
// renewed pair: the renewal would fail weeks later.
func (r *Renewer) checkWritable() {
	for _, f := range []string{r.o.KeyFile, r.o.CertFile} {
		probe, err := os.CreateTemp(filepath.Dir(f), ".renew-probe-*")
		if err != nil {
			r.log.Warn("the device certificate cannot be renewed: its directory is not writable by this process (make it so: chown the directory to the service's user)",
				"dir", filepath.Dir(f), "err", err)
			return
		}
		probe.Close()
		os.Remove(probe.Name())
	}
}

// NotAfter is the end of the certificate in use.
func (r *Renewer) NotAfter() time.Time { return r.cur.Load().NotAfter }

// Topic is the topic of the controller's answers, to subscribe to.
func (r *Renewer) Topic() string { return protocol.Topic(r.o.Root, r.o.ID, protocol.KindCert) }

// Handle takes the message if it is on Topic (and reports so).
func (r *Renewer) Handle(m transport.Message) bool {
	if m.Topic != r.Topic() {
		return false
	}
	rep, err := protocol.DecodeCertReply(m.Payload)
	if err != nil {
		r.log.Warn("certificate answer rejected", "err", err)
		return true
	}
	select {
	case r.replies <- rep:
	default:
	}
	return true
}

// due is when cert should be renewed: at RenewAt of its life, less a
// random jitter of up to a tenth of the life.
func (r *Renewer) due(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	jitter := time.Duration(0)
	if n := int64(life / 10); n > 0 {
		if j, err := rand.Int(rand.Reader, big.NewInt(n)); err == nil {
			jitter = time.Duration(j.Int64())
		}
	}
	return cert.NotBefore.Add(time.Duration(float64(life)*r.o.RenewAt) - jitter)
}

// alertAt is when cert_expiring goes up for cert if it is not renewed.
func alertAt(cert *x509.Certificate) time.Time {
	life := cert.NotAfter.Sub(cert.NotBefore)
	return cert.NotAfter.Add(-min(AlertBefore, life/4))
}

// Run renews the certificate whenever it is due, until ctx is done.
func (r *Renewer) Run(ctx context.Context, link Link) error {
	for {
		cert := r.cur.Load()
		due := r.due(cert)
		r.log.Info("certificate renewal scheduled", "not_after", cert.NotAfter, "renew_at", due.Round(time.Second))
		if !sleepUntil(ctx, due) {
			return nil
		}
		backoff := min(max(cert.NotAfter.Sub(cert.NotBefore)/100, time.Second), time.Minute)
		for attempt := 0; ; attempt++ {
			err := r.renewOnce(ctx, link)
			if err == nil {
				r.o.Alerts.Clear(protocol.AlertCertExpiring)
				break
			}
			if ctx.Err() != nil {
				return nil
			}
			wait := min(backoff<<min(attempt, 20), maxBackoff)
			r.log.Warn("certificate renewal failed", "attempt", attempt+1, "err", err, "retry_in", wait, "not_after", cert.NotAfter)
			if time.Now().After(alertAt(cert)) {
				r.o.Alerts.Raise(protocol.AlertCertExpiring, fmt.Sprintf("the device certificate ends %s and could not be renewed: %v", cert.NotAfter.Format(time.RFC3339), err))
			}
			if !sleepUntil(ctx, time.Now().Add(wait)) {
				return nil
			}
		}
	}
}

// renewOnce makes one attempt: over MQTT while connected; at the
// enrolment endpoint when the certificate has ended and the broker
// refuses it.
func (r *Renewer) renewOnce(ctx context.Context, link Link) error {
	csrPEM, keyPEM, err := provisioning.NewCSR(r.o.ID)
	if err != nil {
		return err
	}
	var certPEM []byte
	switch {
	case link.Connected():
		certPEM, err = r.overMQTT(ctx, link, csrPEM)
	case r.o.EnrollURL != "" && time.Now().After(r.cur.Load().NotAfter):
		certPEM, err = r.enroll(ctx, csrPEM)
	case time.Now().After(r.cur.Load().NotAfter):
		return errors.New("not connected, and the certificate has ended: the broker refuses it; set --enroll-url to renew at the controller's enrolment endpoint")
	default:
		return errors.New("not connected to the broker")
	}
	if err != nil {
		return err
	}
	return r.install(link, certPEM, keyPEM)
}

func (r *Renewer) overMQTT(ctx context.Context, link Link, csrPEM []byte) ([]byte, error) {
	nonce := make([]byte, 16)
	rand.Read(nonce)
	req := protocol.CertRequest{V: protocol.Version, Nonce: hex.EncodeToString(nonce), CSR: string(csrPEM)}
	payload, err := req.Encode()
	if err != nil {
		return nil, err
	}
	for len(r.replies) > 0 { // answers to earlier attempts
		<-r.replies
	}
	if err := link.Publish(ctx, protocol.Topic(r.o.Root, r.o.ID, protocol.KindCSR), payload, 1, false); err != nil {
		return nil, fmt.Errorf("send the request: %w", err)
	}
	t := time.NewTimer(ReplyTimeout)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			return nil, fmt.Errorf("no answer from the controller in %v (does it run with --signing-key?)", ReplyTimeout)
		case rep := <-r.replies:
			if rep.Nonce != req.Nonce {
				continue
			}
			if rep.Error != "" {
				return nil, fmt.Errorf("the controller refused: %s", rep.Error)
			}
			return []byte(rep.Cert), nil
		}
	}
}

// install checks the new certificate, swaps the files and puts it in use.
func (r *Renewer) install(link Link, certPEM, keyPEM []byte) error {
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return fmt.Errorf("the answer is not a certificate of the new key: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return err
		}
		pair.Leaf = leaf
	}
	if err := r.verify(leaf, pair.PrivateKey.(crypto.Signer).Public()); err != nil {
		return err
	}
	if err := Install(r.o.CertFile, r.o.KeyFile, certPEM, keyPEM); err != nil {
		return err
	}
	r.cur.Store(leaf)
	r.log.Info("certificate renewed: reconnecting with it", "serial", provisioning.SerialHex(leaf.SerialNumber), "not_after", leaf.NotAfter)
	link.SetCertificate(pair)
	link.Reconnect()
	return nil
}

// verify: the certificate chains to the device's CA for client use, names
// this device, and certifies pub.
func (r *Renewer) verify(cert *x509.Certificate, pub crypto.PublicKey) error {
	caPEM, err := os.ReadFile(r.o.CAFile)
	if err != nil {
		return fmt.Errorf("verify the new certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return fmt.Errorf("verify the new certificate: no CA certificate in %s", r.o.CAFile)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("the new certificate does not chain to %s: %w", r.o.CAFile, err)
	}
	if cert.Subject.CommonName != r.o.ID {
		return fmt.Errorf("the new certificate names %q, not this device %q", cert.Subject.CommonName, r.o.ID)
	}
	if k, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(pub) {
		return errors.New("the new certificate is not for the key made for it")
	}
	if cert.IsCA {
		return errors.New("the new certificate is a CA")
	}
	return nil
}

// wakeEvery bounds one wait of sleepUntil: the wall clock is looked at
// again at least this often. A board without a real-time clock starts in
// 1970 and is set right by NTP later; a timer runs on the monotonic clock
// and would wait out the decades.
const wakeEvery = 10 * time.Minute

// sleepUntil waits until the wall clock reaches t or ctx ends; it reports
// whether t came.
func sleepUntil(ctx context.Context, t time.Time) bool {
	for {
		d := time.Until(t)
		if d <= 0 {
			return ctx.Err() == nil
		}
		timer := time.NewTimer(min(d, wakeEvery))
		select {
		case <-ctx.Done():
			timer.Stop()
			return false
		case <-timer.C:
		}
	}
}
