package provisioning

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// ControllerCN is the Common Name of the controller's client certificate.
// It is reserved: no device may carry it, because the broker grants it every
// device's topics.
const ControllerCN = "controller"

// ControllerCNPrefix starts the Common Name of each controller process of a
// fleet that runs several (PROTOCOL.md): "controller-<name>". No device id
// may start with it, for the same reason as ControllerCN.
const ControllerCNPrefix = ControllerCN + "-"

// DefaultTopicRoot is the first topic level of every protocol topic.
const DefaultTopicRoot = "thermo"

var deviceIDRe = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ErrReservedID is returned when a device would be given the controller's
// reserved Common Name.
var ErrReservedID = errors.New(`"controller" and names starting with "controller-" are reserved for the controller's certificates`)

// ValidateDeviceID reports whether id may name a device: it must match
// ^[a-z0-9][a-z0-9_-]{0,62}$ (PROTOCOL.md) and must not be a controller's
// name. The id is the MQTT username, client id and a topic level, so
// anything else could escape the broker's ACL: Mosquitto's ACL substitutes
// it into a topic pattern as it is, so a '/' would reach into another
// device's topics and a capital would name another id than the one the
// embedded broker checks.
func ValidateDeviceID(id string) error {
	if err := validateID(id); err != nil {
		return err
	}
	if id == ControllerCN || strings.HasPrefix(id, ControllerCNPrefix) {
		return fmt.Errorf("device id %q: %w", id, ErrReservedID)
	}
	return nil
}

// ValidateControllerCN reports whether cn may name a controller:
// "controller", or "controller-<name>" with <name> matching the device id
// pattern.
func ValidateControllerCN(cn string) error {
	if cn == ControllerCN {
		return nil
	}
	name, ok := strings.CutPrefix(cn, ControllerCNPrefix)
	if !ok {
		return fmt.Errorf("controller name %q: must be %q or %q followed by a name of a-z, 0-9, '_' or '-'", cn, ControllerCN, ControllerCNPrefix)
	}
	if err := validateID(name); err != nil {
		return fmt.Errorf("controller name %q: %w", cn, err)
	}
	return nil
}

// validateClientCN accepts a device id or a controller's name: the only
// Common Names a client certificate of the fleet may carry.
func validateClientCN(cn string) error {
	if cn == ControllerCN || strings.HasPrefix(cn, ControllerCNPrefix) {
		return ValidateControllerCN(cn)
	}
	return ValidateDeviceID(cn)
}

func validateID(id string) error {
	if !deviceIDRe.MatchString(id) {
		return fmt.Errorf("invalid id %q: must be 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit", id)
	}
	return nil
}

var oidCommonName = asn1.ObjectIdentifier{2, 5, 4, 3}

// singleCommonName returns the one Common Name of subject. A subject with
// two or more is refused: Mosquitto takes the first as the client's
// identity and Go's crypto/x509 the last, so "CN=controller,CN=d3" would be
// the controller to one broker and device d3 to the other.
func singleCommonName(subject pkix.Name) (string, error) {
	var cns []string
	for _, atv := range subject.Names {
		if atv.Type.Equal(oidCommonName) {
			cns = append(cns, fmt.Sprint(atv.Value))
		}
	}
	if len(cns) > 1 {
		return "", fmt.Errorf("subject has %d Common Names (%s): brokers disagree on which one is the identity (Mosquitto takes the first, Go the last), so only one is accepted",
			len(cns), strings.Join(cns, ", "))
	}
	return subject.CommonName, nil
}
