package provisioning

import (
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"strings"

	"github.com/thermofleet/thermo/protocol"
)

// ControllerCN is the Common Name of the controller's client certificate.
const ControllerCN = protocol.ControllerID

// validateClientCN accepts a device id or a controller's name: the only
// Common Names a client certificate of the fleet may carry.
func validateClientCN(cn string) error {
	if cn == protocol.ControllerID || strings.HasPrefix(cn, protocol.ControllerPrefix) {
		return protocol.CheckControllerID(cn)
	}
	return protocol.CheckDeviceID(cn)
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
