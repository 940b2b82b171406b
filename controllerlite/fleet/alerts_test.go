package fleet

import (
	"slices"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

func codes(as []protocol.Alert) []string {
	out := []string{}
	for _, a := range as {
		out = append(out, a.Code)
	}
	return out
}

// TestAlerts: a device's alerts are what its latest telemetry reports plus
// what the controller raised itself; each keeps the time it was first
// seen, and the list survives a restart of the controller.
func TestAlerts(t *testing.T) {
	e := newEnv(t, "embedded", nil)
	dir := t.TempDir()
	r := e.start(dir)
	r.waitReady(t)
	d1 := e.device(t, "d1")
	tel := func(alerts string) {
		d1.publish(t, protocol.KindTelemetry, `{"v":1,"ts":"2026-12-04T10:00:00Z","heat":false,"cool":false,"sensor_ok":false`+alerts+`}`)
	}
	for _, step := range []struct {
		name string
		do   func()
		want []string
	}{
		{"device reports two", func() { tel(`,"alerts":["storage_error","sensor_fault"]`) }, []string{"sensor_fault", "storage_error"}},
		{"controller raises one", func() { r.RaiseAlert("d1", protocol.AlertDuplicateIdentity, "taken over 5 times in 60s") },
			[]string{"duplicate_identity", "sensor_fault", "storage_error"}},
		{"device clears one", func() { tel(`,"alerts":["sensor_fault"]`) }, []string{"duplicate_identity", "sensor_fault"}},
		{"telemetry cannot clear the controller's", func() { tel(``) }, []string{"duplicate_identity"}},
		{"controller clears its own", func() { r.ClearAlert("d1", protocol.AlertDuplicateIdentity) }, []string{}},
		{"an unknown code is kept", func() { tel(`,"alerts":["cert_expiring"]`) }, []string{"cert_expiring"}},
	} {
		step.do()
		r.waitDevice(t, "d1", step.name, func(d Device) bool { return slices.Equal(codes(d.Alerts), step.want) })
	}
	first, _ := r.Device("d1")
	tel(`,"alerts":["cert_expiring","storage_error"]`)
	again := r.waitDevice(t, "d1", "a second report", func(d Device) bool { return len(d.Alerts) == 2 })
	if again.Alerts[0].Since != first.Alerts[0].Since {
		t.Errorf("a repeated report moved since from %v to %v", first.Alerts[0].Since, again.Alerts[0].Since)
	}
	r.RaiseAlert("d1", protocol.AlertTLSRefused, "expired")
	before := r.waitDevice(t, "d1", "tls_refused raised", func(d Device) bool { return len(d.Alerts) == 3 })
	r.stop()
	r = e.start(dir)
	after, _ := r.Device("d1")
	if !slices.Equal(codes(after.Alerts), codes(before.Alerts)) {
		t.Errorf("after a restart alerts %v, want %v", after.Alerts, before.Alerts)
	}

	// A malformed alert list is bad input: the telemetry is rejected.
	for _, bad := range []string{`,"alerts":["Bad Code"]`, `,"alerts":"sensor_fault"`} {
		if _, err := protocol.DecodeTelemetry([]byte(`{"v":1,"ts":"2026-12-04T10:00:00Z","heat":false,"cool":false,"sensor_ok":true` + bad + `}`)); err == nil {
			t.Errorf("telemetry with %s accepted", bad)
		}
	}
}
