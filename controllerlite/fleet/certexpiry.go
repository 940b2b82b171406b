package fleet

import (
	"encoding/json"
	"time"
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
