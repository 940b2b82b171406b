package provisioning

import (
	"errors"
	"fmt"
	"regexp"
)

// ControllerCN is the Common Name of the controller's client certificate.
// It is reserved: no device may carry it, because the broker grants it every
// device's topics.
const ControllerCN = "controller"

// DefaultTopicRoot is the first topic level of every protocol topic.
const DefaultTopicRoot = "thermo"

var deviceIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ErrReservedID is returned when a device would be given the controller's
// reserved Common Name.
var ErrReservedID = errors.New(`"controller" is reserved for the controller's certificate`)

// ValidateDeviceID reports whether id may name a device: it must match
// ^[a-z0-9][a-z0-9_-]{0,62}$ (PROTOCOL.md) and must not be the reserved
// controller name. The id is the MQTT username, client id and a topic level,
// so anything else could escape the broker's ACL.
func ValidateDeviceID(id string) error {
	if err := validateClientCN(id); err != nil {
		return err
	}
	if id == ControllerCN {
		return fmt.Errorf("device id %q: %w", id, ErrReservedID)
	}
	return nil
}

// validateClientCN accepts a device id or the controller's name.
func validateClientCN(cn string) error {
	if !deviceIDRe.MatchString(cn) {
		return fmt.Errorf("invalid id %q: must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit", cn)
	}
	return nil
}
