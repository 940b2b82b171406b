// Package renewal is the controller's side of certificate renewal: it
// answers the certificate requests devices send over MQTT on their own csr
// topic (protocol.KindCSR) with a certificate signed by the CA key the
// controller was given (serve --signing-key), and signs the renewals of the
// enrolment endpoint (package enroll) by the same rules: the request's
// Common Name is the requester's id and nothing else, the id is not
// revoked, the key is a board's (provisioning.CheckRenewal).
package renewal

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// MinInterval is the least time between two certificates issued to one
// device (over MQTT or the enrolment endpoint): a device that floods
// requests gets an error answer, not a signature and a file each.
const MinInterval = 10 * time.Second

// queueSize bounds the requests waiting to be signed; more are dropped
// (the devices ask again).
const queueSize = 64

// ErrRevoked is wrapped by the refusal of a revoked device.
var ErrRevoked = errors.New("the device is revoked")

// Publisher sends the answers: the embedded broker in-process, or the
// controller's link to an external broker.
type Publisher func(ctx context.Context, topic string, payload []byte, qos byte, retain bool) error

// Options configure a Service.
type Options struct {
	// Signer is the CA that signs (provisioning.LoadSigner).
	Signer *provisioning.CA
	// Revocations is the list in force.
	Revocations *provisioning.RevocationWatch
	// DataDir keeps a copy of each certificate issued (provisioning.RecordIssued).
	DataDir string
	// Root is the topic root.
	Root string
	// Validity of the certificates issued; provisioning.DefaultDeviceValidity when 0.
	Validity time.Duration
	Logger   *slog.Logger
}

// Service signs renewals.
type Service struct {
	o    Options
	log  *slog.Logger
	reqs chan request

	mu   sync.Mutex
	last map[string]time.Time // when each device was last issued a certificate
}

type request struct {
	id      string
	payload []byte
}

// New returns a Service; Run answers the MQTT requests.
func New(o Options) (*Service, error) {
	if o.Signer == nil || o.Revocations == nil {
		return nil, errors.New("renewal: a signer and the revocation list are required")
	}
	if o.Root == "" {
		o.Root = protocol.DefaultRoot
	}
	if o.Validity <= 0 {
		o.Validity = provisioning.DefaultDeviceValidity
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Service{o: o, log: o.Logger, reqs: make(chan request, queueSize), last: map[string]time.Time{}}, nil
}

// Filter is the subscription that brings every device's requests.
func (s *Service) Filter() string { return protocol.Filter(s.o.Root, protocol.KindCSR) }

// Receive takes a message of Filter. It never blocks: the brokers call it
// on their own goroutines.
func (s *Service) Receive(topic string, payload []byte, retained bool) {
	id, kind, err := protocol.ParseTopic(s.o.Root, topic)
	if err != nil || kind != protocol.KindCSR || retained {
		s.log.Warn("renewal: message ignored", "topic", topic, "retained", retained, "err", err)
		return
	}
	select {
	case s.reqs <- request{id: id, payload: payload}:
	default:
		s.log.Warn("renewal: too many requests waiting, dropped (the device asks again)", "device", id)
	}
}

// Run answers the requests through publish until ctx is done.
func (s *Service) Run(ctx context.Context, publish Publisher) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-s.reqs:
			s.answer(ctx, r, publish)
		}
	}
}

func (s *Service) answer(ctx context.Context, r request, publish Publisher) {
	req, err := protocol.DecodeCertRequest(r.payload)
	if err != nil {
		s.log.Warn("renewal: request rejected", "device", r.id, "err", err)
		return // no nonce to answer to
	}
	reply := protocol.CertReply{V: protocol.Version, Nonce: req.Nonce}
	if certPEM, cert, err := s.Sign(r.id, []byte(req.CSR)); err != nil {
		reply.Error = err.Error()
	} else {
		reply.Cert = string(certPEM)
		s.log.Info("renewal: certificate issued over MQTT", "device", r.id, "serial", provisioning.SerialHex(cert.SerialNumber), "not_after", cert.NotAfter)
	}
	if reply.Error != "" {
		s.log.Warn("renewal: refused", "device", r.id, "reason", reply.Error)
	}
	payload, err := reply.Encode()
	if err != nil {
		s.log.Error("renewal: answer", "device", r.id, "err", err)
		return
	}
	if err := publish(ctx, protocol.Topic(s.o.Root, r.id, protocol.KindCert), payload, 1, false); err != nil {
		s.log.Warn("renewal: answer not sent (the device asks again)", "device", r.id, "err", err)
	}
}

func (s *Service) tooSoon(id string) time.Duration {
	s.mu.Lock()
	defer s.mu.Unlock()
	if t, ok := s.last[id]; ok {
		if d := MinInterval - time.Since(t); d > 0 {
			return d
		}
	}
	return 0
}

func (s *Service) issued(id string) {
	s.mu.Lock()
	s.last[id] = time.Now()
	s.mu.Unlock()
}

// Sign checks a request (PEM or DER) of device id and signs it: the rule
// of both MQTT renewal and the enrolment endpoint. A copy of the
// certificate is kept in the data directory, so revoking the device later
// revokes it too.
func (s *Service) Sign(id string, csrData []byte) ([]byte, *x509.Certificate, error) {
	if e, revoked := s.o.Revocations.Fresh().RevokedID(id); revoked {
		return nil, nil, fmt.Errorf("%w: %w (%s %s)", provisioning.ErrRenewalRefused, ErrRevoked, e.Time.Format(time.RFC3339), e.Reason)
	}
	if wait := s.tooSoon(id); wait > 0 {
		return nil, nil, fmt.Errorf("%w: a certificate was issued to %s less than %v ago: ask again in %v", provisioning.ErrRenewalRefused, id, MinInterval, wait.Round(time.Second))
	}
	csr, err := provisioning.ParseCSR(csrData)
	if err != nil {
		return nil, nil, err
	}
	certPEM, cert, err := s.o.Signer.SignRenewal(csr, id, &provisioning.IssueOptions{Validity: s.o.Validity})
	if err != nil {
		return nil, nil, err
	}
	s.issued(id)
	if err := provisioning.RecordIssued(s.o.DataDir, cert); err != nil {
		// Issued all the same: the device needs it; revoking the id
		// still refuses it on the embedded broker.
		s.log.Error("renewal: the copy of the certificate was not kept", "device", id, "err", err)
	}
	return certPEM, cert, nil
}

// Revoked reports whether cert is revoked (the enrolment endpoint asks).
func (s *Service) Revoked(cert *x509.Certificate) (provisioning.Revocation, bool) {
	return s.o.Revocations.Fresh().Check(cert)
}
