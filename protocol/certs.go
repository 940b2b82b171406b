package protocol

// Certificate renewal over the fleet's own connection (docs/certificates.md):
// a device sends a certificate request for a key it made on the board on
// <root>/<id>/csr, and the controller answers on <root>/<id>/cert. Neither
// is retained: a request is answered while the device waits, or not at all,
// and the device asks again. Neither is clocked: certificates are no
// property of the sync state.

import (
	"encoding/json"
	"fmt"
)

const (
	// KindCSR carries a device's certificate request to the controller.
	KindCSR Kind = "csr"
	// KindCert carries the controller's answer to the device.
	KindCert Kind = "cert"
)

// renewalDeviceGrants: a device sends its requests and reads the answers.
var renewalDeviceGrants = []Grant{
	{Filter: SelfID + "/" + string(KindCSR), Publish: true},
	{Filter: SelfID + "/" + string(KindCert), Subscribe: true},
}

// renewalControllerGrants: the controller answers every device (it reads
// the requests through its "#"); and when it retires a device
// (controllerlite delete) it clears the device's retained messages by
// publishing empty retained ones on its topics.
var renewalControllerGrants = []Grant{
	{Filter: "+/" + string(KindCert), Publish: true},
	{Filter: "+/" + string(KindEvent), Publish: true, Retain: true},
	{Filter: "+/" + string(KindStatus), Publish: true, Retain: true},
	{Filter: "+/" + string(KindTelemetry), Publish: true, Retain: true},
}

// CertRequest is the payload on KindCSR: a PKCS#10 request, PEM, for the
// device's own id, and a nonce the answer repeats.
type CertRequest struct {
	V     int    `json:"v"`
	Nonce string `json:"nonce"`
	CSR   string `json:"csr"`
}

// CertReply is the payload on KindCert: the certificate (PEM, the leaf
// first) or why there is none.
type CertReply struct {
	V     int    `json:"v"`
	Nonce string `json:"nonce"`
	Cert  string `json:"cert,omitempty"`
	Error string `json:"error,omitempty"`
}

// maxNonce bounds the nonce; a device sends 16 random bytes in hex.
const maxNonce = 64

// DecodeCertRequest parses and checks a KindCSR payload.
func DecodeCertRequest(payload []byte) (CertRequest, error) {
	var r CertRequest
	if len(payload) > MaxPayload {
		return r, invalid("certificate request of %d bytes, at most %d", len(payload), MaxPayload)
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, invalid("certificate request: %v", err)
	}
	if r.V != Version {
		return r, invalid("certificate request: v %d, want %d", r.V, Version)
	}
	if r.Nonce == "" || len(r.Nonce) > maxNonce || r.CSR == "" {
		return r, invalid("certificate request: nonce (1-%d bytes) and csr are required", maxNonce)
	}
	return r, nil
}

// DecodeCertReply parses and checks a KindCert payload.
func DecodeCertReply(payload []byte) (CertReply, error) {
	var r CertReply
	if len(payload) > MaxPayload {
		return r, invalid("certificate reply of %d bytes, at most %d", len(payload), MaxPayload)
	}
	if err := json.Unmarshal(payload, &r); err != nil {
		return r, invalid("certificate reply: %v", err)
	}
	if r.V != Version || r.Nonce == "" || (r.Cert == "") == (r.Error == "") {
		return r, invalid("certificate reply: want v %d, a nonce and one of cert or error", Version)
	}
	return r, nil
}

// Encode renders the payload.
func (r CertRequest) Encode() ([]byte, error) { return encodeCert(r) }

// Encode renders the payload.
func (r CertReply) Encode() ([]byte, error) { return encodeCert(r) }

func encodeCert(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("encode: %d bytes, at most %d", len(b), MaxPayload)
	}
	return b, nil
}
