// Package enroll is the controller's enrolment endpoint (serve
// --enroll-listen): an HTTPS server where a device whose certificate ended
// while it was off (a holiday home) gets a new one without a visit. It has
// the shape of EST simple re-enroll (RFC 7030 section 4.2.2): the device
// authenticates with its old certificate in the TLS handshake and POSTs a
// base64 PKCS#10 request to /.well-known/est/simplereenroll; the answer is
// a base64 certs-only PKCS#7 (application/pkcs7-mime; smime-type=certs-only).
// Unlike a plain EST server, the old certificate is accepted after its
// end, for a grace period (180 days by default), when it chains to the
// fleet's CA and is not revoked; the request is held to the renewal rules
// (its Common Name is the old certificate's, and nothing else, a board's
// key, no CA). /.well-known/est/cacerts gives the CA certificate.
package enroll

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/renewal"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// Paths of RFC 7030.
const (
	PathSimpleReenroll = "/.well-known/est/simplereenroll"
	PathCACerts        = "/.well-known/est/cacerts"
)

// DefaultGrace is how long after its end a certificate is still accepted.
const DefaultGrace = 180 * 24 * time.Hour

// maxBody bounds a request: a base64 PKCS#10 is under 2 KiB.
const maxBody = 16 << 10

// Options configure a Server.
type Options struct {
	// Listen is the HTTPS address.
	Listen string
	// CAFile is the fleet CA (client certificates must chain to it).
	CAFile string
	// Certificate returns the server certificate (reloaded on SIGHUP).
	Certificate func(*tls.ClientHelloInfo) (*tls.Certificate, error)
	// Renewal signs (and knows the revocations).
	Renewal *renewal.Service
	// Grace is DefaultGrace when 0.
	Grace  time.Duration
	Logger *slog.Logger
}

// Server is the enrolment endpoint.
type Server struct {
	o     Options
	log   *slog.Logger
	roots *x509.CertPool
	ca    []*x509.Certificate
	ln    net.Listener
	srv   *http.Server
	wg    sync.WaitGroup
}

// Start listens and serves until Close.
func Start(o Options) (*Server, error) {
	if o.Renewal == nil || o.Certificate == nil {
		return nil, errors.New("enroll: needs a signing key (--signing-key) and a server certificate")
	}
	if o.Grace <= 0 {
		o.Grace = DefaultGrace
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	roots, err := provisioning.LoadCertPool(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	caCert, err := provisioning.ReadCertificate(o.CAFile)
	if err != nil {
		return nil, fmt.Errorf("enroll: %w", err)
	}
	s := &Server{o: o, log: o.Logger, roots: roots, ca: []*x509.Certificate{caCert}}
	conf := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: o.Certificate,
		// Verified by verifyClient: Go's own check refuses an expired
		// certificate, the very case this endpoint is for.
		ClientAuth:            tls.RequireAnyClientCert,
		VerifyPeerCertificate: s.verifyClient,
	}
	raw, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("enroll: listen on %s: %w", o.Listen, err)
	}
	s.ln = tls.NewListener(raw, conf)
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+PathSimpleReenroll, s.reenroll)
	mux.HandleFunc("GET "+PathCACerts, s.caCerts)
	s.srv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second, // bounds the TLS handshake too
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       time.Minute,
		ErrorLog:          slog.NewLogLogger(o.Logger.Handler(), slog.LevelDebug),
	}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		// net/http's Serve retries temporary accept errors with backoff.
		if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("enrolment endpoint stopped", "err", err)
		}
	}()
	s.log.Info("enrolment endpoint listening", "addr", raw.Addr().String(), "grace", o.Grace)
	return s, nil
}

// Addr is the listen address.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Close stops the endpoint.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	s.ln.Close()
	s.wg.Wait()
	return err
}

// verifyClient accepts a device certificate of the fleet's CA that is
// valid now or ended less than the grace period ago, and is not revoked.
func (s *Server) verifyClient(rawCerts [][]byte, _ [][]*x509.Certificate) error {
	if len(rawCerts) == 0 {
		return errors.New("enroll: no client certificate")
	}
	leaf, err := x509.ParseCertificate(rawCerts[0])
	if err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	inter := x509.NewCertPool()
	for _, r := range rawCerts[1:] {
		if c, err := x509.ParseCertificate(r); err == nil {
			inter.AddCert(c)
		}
	}
	now := time.Now()
	at := now
	if now.After(leaf.NotAfter) {
		if now.Sub(leaf.NotAfter) > s.o.Grace {
			return fmt.Errorf("enroll: certificate of %q ended %s, more than the grace period (%v) ago", leaf.Subject.CommonName, leaf.NotAfter.Format(time.RFC3339), s.o.Grace)
		}
		at = leaf.NotAfter.Add(-time.Second)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: s.roots, Intermediates: inter, CurrentTime: at,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if err := protocol.CheckDeviceID(leaf.Subject.CommonName); err != nil {
		return fmt.Errorf("enroll: %w", err)
	}
	if e, revoked := s.o.Renewal.Revoked(leaf); revoked {
		return fmt.Errorf("enroll: certificate of %q is revoked (%s %s)", leaf.Subject.CommonName, e.Time.Format(time.RFC3339), e.Reason)
	}
	return nil
}

func (s *Server) reenroll(w http.ResponseWriter, r *http.Request) {
	if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
		http.Error(w, "a client certificate is required", http.StatusUnauthorized)
		return
	}
	id := r.TLS.PeerCertificates[0].Subject.CommonName
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	if err != nil {
		http.Error(w, "request too large", http.StatusRequestEntityTooLarge)
		return
	}
	der, err := base64.StdEncoding.DecodeString(strings.Map(func(c rune) rune {
		if c == '\r' || c == '\n' || c == ' ' || c == '\t' {
			return -1
		}
		return c
	}, string(body)))
	if err != nil {
		http.Error(w, "the body must be a base64 PKCS#10 request (RFC 7030)", http.StatusBadRequest)
		return
	}
	_, cert, err := s.o.Renewal.Sign(id, der)
	if err != nil {
		s.log.Warn("re-enrolment refused", "device", id, "remote", r.RemoteAddr, "reason", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	p7, err := provisioning.EncodeCertsOnly([]*x509.Certificate{cert})
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	s.log.Info("re-enrolled", "device", id, "remote", r.RemoteAddr, "old_not_after", r.TLS.PeerCertificates[0].NotAfter,
		"serial", provisioning.SerialHex(cert.SerialNumber), "not_after", cert.NotAfter)
	writeP7(w, p7)
}

func (s *Server) caCerts(w http.ResponseWriter, _ *http.Request) {
	p7, err := provisioning.EncodeCertsOnly(s.ca)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeP7(w, p7)
}

func writeP7(w http.ResponseWriter, p7 []byte) {
	w.Header().Set("Content-Type", "application/pkcs7-mime; smime-type=certs-only")
	w.Header().Set("Content-Transfer-Encoding", "base64")
	io.WriteString(w, base64.StdEncoding.EncodeToString(p7))
}
