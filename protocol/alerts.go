package protocol

import (
	"fmt"
	"regexp"
	"time"
)

// Alert codes: the conditions of a device that need a person. A device
// reports the codes it has in its telemetry ("alerts"); the controller adds
// the ones only it can see; the API, `thermostat status`, the dashboard,
// metrics and Home Assistant all show these same codes.
const (
	// AlertDuplicateIdentity: two boards use one certificate (a cloned SD
	// card); they take each other's session over and over.
	AlertDuplicateIdentity = "duplicate_identity"
	// AlertStorageError: the device cannot save its state (a full or
	// read-only disk); it keeps heating on the last settings it saved and
	// refuses changes it could not keep.
	AlertStorageError = "storage_error"
	// AlertSensorFault: the control sensor gives no valid reading; the
	// outputs are off (frost protection aside).
	AlertSensorFault = "sensor_fault"
	// AlertTLSRefused: the peer refuses this side's certificate, or this
	// side the peer's, again and again (expired, revoked, wrong CA).
	AlertTLSRefused = "tls_refused"
	// AlertCertExpiring: the device's certificate ends within two weeks
	// (a quarter of its life if shorter) and renewing it failed.
	AlertCertExpiring = "cert_expiring"
)

// AlertCodes lists the codes this version knows, for documentation and
// metrics. Receivers keep codes they do not know: a newer peer may send
// more.
var AlertCodes = []string{AlertCertExpiring, AlertDuplicateIdentity, AlertSensorFault, AlertStorageError, AlertTLSRefused}

// MaxAlerts bounds the codes one telemetry payload may carry.
const MaxAlerts = 16

var alertCodeRE = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)

// CheckAlertCode reports whether code has the shape of an alert code.
func CheckAlertCode(code string) error {
	if !alertCodeRE.MatchString(code) {
		return fmt.Errorf("alert code %q does not match %s", code, alertCodeRE)
	}
	return nil
}

// Alert is one condition that needs a person, as the API and `thermostat
// status` show it: its code, since when it holds, and what was seen.
type Alert struct {
	Code   string    `json:"code"`
	Since  time.Time `json:"since"`
	Detail string    `json:"detail,omitempty"`
}
