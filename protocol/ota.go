package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Over-the-air update topics (docs/ota.md). Neither is clocked: an offer
// is the controller's current wish for the device, a state report the
// device's latest news; both are retained, so either side reads the
// other's latest after a restart.
const (
	// KindOTA carries the controller's Offer to one device (retained; an
	// empty payload withdraws it).
	KindOTA Kind = "ota"
	// KindOTAState carries the device's OTAState (retained).
	KindOTAState Kind = "ota_state"
)

// otaDeviceGrants and otaControllerGrants are appended to deviceGrants and
// controllerGrants: a device reads its offer and reports its state; the
// controller offers (retained) and reads every report under "#".
var (
	otaDeviceGrants = []Grant{
		{Filter: SelfID + "/" + string(KindOTA), Subscribe: true},
		{Filter: SelfID + "/" + string(KindOTAState), Publish: true, Retain: true},
	}
	otaControllerGrants = []Grant{
		{Filter: "+/" + string(KindOTA), Publish: true, Retain: true},
	}
)

// Offer tells a device which release to install. Manifest is the signed
// manifest file as `controllerlite release sign` wrote it (the device
// checks its signature with its own key; the controller is not trusted).
// The binary is fetched over HTTPS with the device's certificate: from
// URL, or, when URL is empty, from https://<the broker's host>:<Port><Path>.
type Offer struct {
	V        int             `json:"v"`
	Manifest json.RawMessage `json:"manifest"`
	URL      string          `json:"url,omitempty"`
	Port     int             `json:"port,omitempty"`
	Path     string          `json:"path,omitempty"`
}

// OTA states a device reports.
const (
	// OTAIdle: no offer, or nothing to do.
	OTAIdle = "idle"
	// OTAOffered: an offer arrived and passed the manifest's checks.
	OTAOffered = "offered"
	// OTADownloading: the binary is being fetched (Progress bytes so far).
	OTADownloading = "downloading"
	// OTAInstalled: verified and in the inactive slot; the device restarts
	// into it, on trial.
	OTAInstalled = "installed"
	// OTAHealthy: the device runs the offered release and it proved
	// healthy (or already ran it).
	OTAHealthy = "healthy"
	// OTARolledBack: the release failed its trial and the previous version
	// runs again; Reason says how it failed.
	OTARolledBack = "rolled_back"
	// OTARefused: the release failed a check (signature, expiry,
	// architecture, version, size, hash); Reason says which.
	OTARefused = "refused"
	// OTAFailed: a download or install error; the next offer of the
	// release (the controller offers again at its restart) tries again.
	OTAFailed = "failed"
)

// OTAState is a device's update report.
type OTAState struct {
	V int `json:"v"`
	// State is one of the OTA states above.
	State string `json:"state"`
	// Release is the version the state is about ("" for idle).
	Release string `json:"release,omitempty"`
	// Running is the version running now, and Slot where it runs from
	// ("a", "b" or "packaged").
	Running string `json:"running"`
	Slot    string `json:"slot,omitempty"`
	// Code is a short reason code (bad_signature, expired, wrong_arch,
	// downgrade, too_old, bad_size, bad_hash, crashed, deadline...), Reason
	// the sentence for a person.
	Code   string `json:"code,omitempty"`
	Reason string `json:"reason,omitempty"`
	// Progress and Size are bytes while downloading.
	Progress int64     `json:"progress,omitempty"`
	Size     int64     `json:"size,omitempty"`
	TS       time.Time `json:"ts"`
}

// EncodeOffer and DecodeOffer, EncodeOTAState and DecodeOTAState check
// the version and size rules every payload of the contract keeps.
func EncodeOffer(o Offer) ([]byte, error) { o.V = Version; return encodeOTA(o) }

func DecodeOffer(b []byte) (Offer, error) {
	var o Offer
	if err := decodeOTA(b, &o, &o.V); err != nil {
		return o, err
	}
	if len(o.Manifest) == 0 || (o.URL == "" && (o.Path == "" || o.Port <= 0 || o.Port > 65535)) {
		return o, errors.New("offer: a manifest and a url (or port and path) are required")
	}
	return o, nil
}

func EncodeOTAState(s OTAState) ([]byte, error) { s.V = Version; return encodeOTA(s) }

func DecodeOTAState(b []byte) (OTAState, error) {
	var s OTAState
	if err := decodeOTA(b, &s, &s.V); err != nil {
		return s, err
	}
	switch s.State {
	case OTAIdle, OTAOffered, OTADownloading, OTAInstalled, OTAHealthy, OTARolledBack, OTARefused, OTAFailed:
		return s, nil
	}
	return s, fmt.Errorf("ota state: unknown state %q", s.State)
}

func encodeOTA(v any) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	if len(b) > MaxPayload {
		return nil, fmt.Errorf("ota payload of %d bytes: at most %d", len(b), MaxPayload)
	}
	return b, nil
}

func decodeOTA(b []byte, v any, ver *int) error {
	if len(b) > MaxPayload {
		return fmt.Errorf("ota payload of %d bytes: at most %d", len(b), MaxPayload)
	}
	if err := json.NewDecoder(bytes.NewReader(b)).Decode(v); err != nil {
		return fmt.Errorf("ota payload: %w", err)
	}
	if *ver != Version {
		return fmt.Errorf("ota payload: version %d, want %d", *ver, Version)
	}
	return nil
}
