package fleet

import (
	"encoding/json"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// certExpires reads cert_expires from a stored telemetry payload (already
// validated when it was received), nil when absent.
func certExpires(telemetry json.RawMessage) *time.Time {
	if len(telemetry) == 0 {
		return nil
	}
	var t struct {
		CertExpires *time.Time `json:"cert_expires"`
	}
	if json.Unmarshal(telemetry, &t) != nil {
		return nil
	}
	return t.CertExpires
}

// reads reports whether topic is of a kind the fleet subscribes to.
func (f *Fleet) reads(topic string) bool {
	_, kind, err := protocol.ParseTopic(f.root, topic)
	if err != nil {
		return true // the fleet rejects and counts it
	}
	switch kind {
	case protocol.KindCmd, protocol.KindEvent, protocol.KindStatus, protocol.KindTelemetry:
		return true
	}
	return false
}
