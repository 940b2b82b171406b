package metrics

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/protocol"
)

// stubFleet answers the collector with fixed figures. The end-to-end test
// (controllerlite/server TestMetrics) runs the real fleet; this one pins
// the mapping of each field to its series.
type stubFleet struct {
	st   fleet.Status
	c    fleet.Counts
	devs []fleet.Device
}

func (s stubFleet) Status() fleet.Status    { return s.st }
func (s stubFleet) Counts() fleet.Counts    { return s.c }
func (s stubFleet) Devices() []fleet.Device { return s.devs }

type stubBroker broker.Stats

func (s stubBroker) Stats() broker.Stats { return broker.Stats(s) }

type stubHistory history.Stats

func (s stubHistory) Stats() history.Stats { return history.Stats(s) }

func telemetry(t *testing.T, tm protocol.Telemetry) json.RawMessage {
	t.Helper()
	tm.TS = time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	b, err := tm.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func temp(c float64) *float64 { return &c }

// seen is the stub's last_seen: 2026-12-04T20:00:01.5Z, 1796414401.5.
var seen = time.Date(2026, 12, 4, 20, 0, 1, 500_000_000, time.UTC)

// certEnd is a device certificate's end, 90 days after it was issued.
var certEnd = time.Date(2027, 3, 4, 0, 0, 0, 0, time.UTC)

func stub(t *testing.T) stubFleet {
	counts := fleet.Counts{Received: map[string]uint64{}, Rejected: map[string]map[string]uint64{}}
	for _, k := range fleet.CountedKinds {
		counts.Received[k] = 0
		counts.Rejected[k] = map[string]uint64{}
		for _, r := range fleet.RejectReasons {
			counts.Rejected[k][r] = 0
		}
	}
	counts.Received["event"], counts.Received["telemetry"] = 7, 3
	counts.Rejected["event"][fleet.ReasonInvalid] = 2
	sp := func(v float64) protocol.Props {
		return protocol.Props{protocol.PropSetpoint: {Val: v, W: protocol.Clock{0, 1}}}
	}
	return stubFleet{
		st: fleet.Status{Ready: true, Connected: true, Devices: 3, Received: 10, Rejected: 2, PropsRejected: 1, Published: 4, Owed: 1},
		c:  counts,
		devs: []fleet.Device{
			{ID: "heating", Online: true, Props: sp(21), LastSeen: &seen, CertExpires: &certEnd,
				Telemetry: telemetry(t, protocol.Telemetry{TempC: temp(19.25), Heat: true, SensorOK: true})},
			{ID: "faulty", Online: true, Props: protocol.Props{},
				Telemetry: telemetry(t, protocol.Telemetry{Alerts: []string{protocol.AlertSensorFault}}),
				Alerts:    []protocol.Alert{{Code: protocol.AlertSensorFault}, {Code: protocol.AlertStorageError}}},
			// Offline: its last telemetry had the heat on, which is no
			// longer true of now.
			{ID: "gone", Online: false, Props: sp(18),
				Telemetry: telemetry(t, protocol.Telemetry{TempC: temp(17), Heat: true, SensorOK: true})},
		},
	}
}

func TestFleetCollector(t *testing.T) {
	m := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.Watch(stub(t), stubBroker{ClientsConnected: 2, Retained: 6, MessagesReceived: 9, MessagesSent: 8, MessagesDropped: 1, TLSHandshakes: 5, TLSResumed: 3})
	m.WatchHistory(stubHistory{Pending: 7, Written: 120, Dropped: 4, Checking: true})
	m.Committed(3 * time.Millisecond)
	m.Resynced("heating", 40*time.Millisecond)

	tests := []struct {
		name, want string
	}{
		{"controllerlite_devices", "controllerlite_devices 3\n"},
		{"controllerlite_devices_online", "controllerlite_devices_online 2\n"},
		{"controllerlite_ready", "controllerlite_ready 1\n"},
		{"controllerlite_commands_owed", "controllerlite_commands_owed 1\n"},
		{"controllerlite_commands_published_total", "controllerlite_commands_published_total 4\n"},
		{"controllerlite_properties_rejected_total", "controllerlite_properties_rejected_total 1\n"},
		{"controllerlite_device_online", `
controllerlite_device_online{device="faulty"} 1
controllerlite_device_online{device="gone"} 0
controllerlite_device_online{device="heating"} 1
`},
		{"controllerlite_device_temperature_celsius", `
controllerlite_device_temperature_celsius{device="heating"} 19.25
`},
		{"controllerlite_device_setpoint_celsius", `
controllerlite_device_setpoint_celsius{device="gone"} 18
controllerlite_device_setpoint_celsius{device="heating"} 21
`},
		{"controllerlite_device_heating", `
controllerlite_device_heating{device="faulty"} 0
controllerlite_device_heating{device="heating"} 1
`},
		{"controllerlite_device_alerts", `
controllerlite_device_alerts{device="faulty"} 2
controllerlite_device_alerts{device="gone"} 0
controllerlite_device_alerts{device="heating"} 0
`},
		{"controllerlite_device_alert", `
controllerlite_device_alert{code="sensor_fault",device="faulty"} 1
controllerlite_device_alert{code="storage_error",device="faulty"} 1
`},
		{"controllerlite_device_last_seen_timestamp_seconds", `
controllerlite_device_last_seen_timestamp_seconds{device="heating"} 1796414401.5
`},
		{"controllerlite_device_certificate_expiry_timestamp_seconds", `
controllerlite_device_certificate_expiry_timestamp_seconds{device="heating"} 1804118400
`},
		{"controllerlite_broker_clients_connected", "controllerlite_broker_clients_connected 2\n"},
		{"controllerlite_broker_retained_messages", "controllerlite_broker_retained_messages 6\n"},
		{"controllerlite_broker_messages_dropped_total", "controllerlite_broker_messages_dropped_total 1\n"},
		{"controllerlite_broker_tls_handshakes_total", "controllerlite_broker_tls_handshakes_total 5\n"},
		{"controllerlite_broker_tls_resumed_total", "controllerlite_broker_tls_resumed_total 3\n"},
		{"controllerlite_history_up", "controllerlite_history_up 0\n"},
		{"controllerlite_history_checking", "controllerlite_history_checking 1\n"},
		{"controllerlite_history_samples_written_total", "controllerlite_history_samples_written_total 120\n"},
		{"controllerlite_history_samples_dropped_total", "controllerlite_history_samples_dropped_total 4\n"},
		{"controllerlite_history_samples_pending", "controllerlite_history_samples_pending 7\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The expected text needs only the samples: HELP and TYPE
			// are taken from what was gathered.
			fams, err := m.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			var help, typ string
			for _, f := range fams {
				if f.GetName() == tc.name {
					help, typ = f.GetHelp(), strings.ToLower(f.GetType().String())
				}
			}
			if help == "" {
				t.Fatalf("%s not gathered", tc.name)
			}
			exp := "# HELP " + tc.name + " " + help + "\n# TYPE " + tc.name + " " + typ + "\n" + strings.TrimPrefix(tc.want, "\n")
			if err := testutil.GatherAndCompare(m.Registry(), strings.NewReader(exp), tc.name); err != nil {
				t.Error(err)
			}
		})
	}
	if n := testutil.CollectAndCount(m.commit); n != 1 {
		t.Errorf("commit histogram: %d series", n)
	}
	if n, err := testutil.GatherAndCount(m.Registry(), "controllerlite_messages_rejected_total"); err != nil || n != len(fleet.CountedKinds)*len(fleet.RejectReasons) {
		t.Errorf("rejected: %d series (%v), want one per kind and reason, zero or not", n, err)
	}
}

// TestLint: every metric follows Prometheus's naming rules (promlint:
// units in the name, _total on counters, help text), and what is
// collected matches what is described (a pedantic registry checks it).
func TestLint(t *testing.T) {
	m := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.Watch(stub(t), stubBroker{})
	m.WatchHistory(stubHistory{})
	problems, err := testutil.GatherAndLint(m.Registry())
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(fleetCollector{stub(t)}, brokerCollector{stubBroker{}}, historyCollector{stubHistory{Failed: true}})
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// documented returns the metric names with prefix that docs/metrics.md
// lists in the first column of its tables.
func documented(t *testing.T, prefix string) []string {
	t.Helper()
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?m)^\\| `(" + prefix + "[a-z_]+)` \\|")
	var names []string
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		names = append(names, m[1])
	}
	slices.Sort(names)
	return names
}

// TestDocumented: docs/metrics.md lists exactly the metrics the controller
// serves.
func TestDocumented(t *testing.T) {
	m := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
	m.Watch(stub(t), stubBroker{})
	m.WatchHistory(stubHistory{})
	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	var served []string
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), Namespace+"_") {
			served = append(served, f.GetName())
		}
	}
	slices.Sort(served)
	if docs := documented(t, Namespace+"_"); !slices.Equal(served, docs) {
		t.Errorf("served and documented differ:\nserved     %v\ndocumented %v", served, docs)
	}
}
