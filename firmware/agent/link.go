package agent

import (
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// linkAlerts turns the troubles of the broker connection into the device's
// alerts, each with what a person must do about it: reconnecting, which
// transport keeps doing, cures neither.
var linkAlerts = map[transport.Trouble]struct{ code, cure string }{
	transport.TroubleTakeover: {protocol.AlertDuplicateIdentity,
		"another board uses this board's certificate (a cloned SD card?): give every board its own certificate " +
			"(controllerlite pki device <id>, or thermostat csr on the board) and never clone a provisioned card; " +
			"until then the two take each other's session over, their clocks race, and this board reconnects at most every few minutes"},
	transport.TroubleTLSRefused: {protocol.AlertTLSRefused,
		"the TLS handshake with the broker is refused on every attempt: check this board's clock and its certificate's dates and issuer " +
			"(openssl x509 -in device.crt -noout -dates -issuer), and the broker's; issue a new certificate if it expired or comes from another CA"},
}

// LinkTrouble is transport's OnTrouble: a trouble that begins raises the
// device's alert (logged at ERROR once, with the cure), one that ends
// clears it. The alert shows in `thermostat status` at once and reaches
// the controller with the next telemetry.
func (a *Agent) LinkTrouble(t transport.Trouble, active bool, detail string) {
	la, ok := linkAlerts[t]
	if !ok {
		a.log.Warn("link trouble without an alert", "trouble", t, "active", active, "detail", detail)
		return
	}
	if !active {
		if a.alerts.Clear(la.code) {
			a.log.Info("alert cleared", "alert", la.code, "trouble", t)
		}
		return
	}
	if a.alerts.Raise(la.code, detail) {
		a.log.Error("alert raised: "+t.String(), "alert", la.code, "detail", detail, "cure", la.cure)
	}
}
