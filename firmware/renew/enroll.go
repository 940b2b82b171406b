package renew

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/thermofleet/thermo/provisioning"
)

// enrollTimeout bounds one request to the enrolment endpoint.
const enrollTimeout = 30 * time.Second

// SimpleReenrollPath is RFC 7030's path, under EnrollURL.
const SimpleReenrollPath = "/.well-known/est/simplereenroll"

// enroll renews at the controller's enrolment endpoint (EST simple
// re-enroll), authenticated by the certificate in use even after its end;
// it returns the new certificate, PEM.
func (r *Renewer) enroll(ctx context.Context, csrPEM []byte) ([]byte, error) {
	u, err := url.Parse(r.o.EnrollURL)
	if err != nil {
		return nil, fmt.Errorf("enroll URL: %w", err)
	}
	roots, err := provisioning.LoadCertPool(r.o.CAFile)
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(r.o.CertFile, r.o.KeyFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(csrPEM)
	client := &http.Client{
		Timeout: enrollTimeout,
		Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		},
	}
	defer client.CloseIdleConnections()
	u.Path = strings.TrimSuffix(u.Path, "/") + SimpleReenrollPath
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.String(), strings.NewReader(base64.StdEncoding.EncodeToString(block.Bytes)))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/pkcs10")
	req.Header.Set("Content-Transfer-Encoding", "base64")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("enrolment endpoint: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("enrolment endpoint: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("enrolment endpoint refused (%s): %s", resp.Status, bytes.TrimSpace(body))
	}
	der, err := base64.StdEncoding.DecodeString(string(bytes.Join(bytes.Fields(body), nil)))
	if err != nil {
		return nil, fmt.Errorf("enrolment endpoint: the answer is not base64: %w", err)
	}
	certs, err := provisioning.DecodeCertsOnly(der)
	if err != nil {
		return nil, fmt.Errorf("enrolment endpoint: %w", err)
	}
	r.log.Info("certificate re-enrolled at the enrolment endpoint", "url", r.o.EnrollURL)
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certs[0].Raw}), nil
}
