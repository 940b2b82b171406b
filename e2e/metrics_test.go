package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestBinMetrics runs the real binaries with their metrics on: the
// controller's /metrics shows the thermostat online and its resync, and
// the thermostat's own /metrics shows it connected with its state written.
func TestBinMetrics(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs both binaries")
	}
	w := newBareWorld(t, embedded)
	ctl := startBinController(t, w, t.TempDir(), "--metrics")
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	d := newBinThermostat(t, w, "m1", "--metrics-addr", addr).start()
	d.synced()

	check := func(url, what string, want map[string]float64, atLeast map[string]float64) {
		t.Helper()
		eventually(t, what, func() (bool, string) {
			code, body := testenv.Scrape(t, url, "")
			if code != http.StatusOK {
				return false, fmt.Sprintf("status %d", code)
			}
			ms := testenv.ParseMetrics(t, body)
			for series, v := range want {
				name, labels := splitSeries(series)
				if got, ok := ms.Value(name, labels); !ok || got != v {
					return false, fmt.Sprintf("%s = %v (present %v), want %v", series, got, ok, v)
				}
			}
			for series, v := range atLeast {
				name, labels := splitSeries(series)
				if got, ok := ms.Value(name, labels); !ok || got < v {
					return false, fmt.Sprintf("%s = %v (present %v), want at least %v", series, got, ok, v)
				}
			}
			return true, ""
		})
	}
	check("http://"+ctl.apiAddr+"/metrics", "the controller's metrics", map[string]float64{
		"controllerlite_devices_online":                                     1,
		"controllerlite_device_online{device=m1}":                           1,
		"controllerlite_broker_clients_connected":                           1,
		"controllerlite_commands_owed":                                      0,
		"controllerlite_messages_rejected_total{kind=event,reason=invalid}": 0,
	}, map[string]float64{
		"controllerlite_resync_duration_seconds":                 1,
		"controllerlite_commit_duration_seconds":                 1,
		"controllerlite_messages_received_total{kind=telemetry}": 1,
	})
	check("http://"+addr+"/metrics", "the thermostat's metrics", map[string]float64{
		"thermostat_broker_connected":           1,
		"thermostat_state_write_failures_total": 0,
		"thermostat_alerts":                     0,
	}, map[string]float64{
		"thermostat_state_writes_total":            1,
		"thermostat_events_sent_total":             1,
		"thermostat_control_loop_iterations_total": 1,
	})
	if !strings.Contains(d.logText(), "metrics at /metrics") {
		t.Errorf("the thermostat did not log where its metrics are")
	}
}

// splitSeries splits `name{k=v,k=v}` into the name and "k=v,k=v".
func splitSeries(s string) (name, labels string) {
	name, labels, _ = strings.Cut(strings.TrimSuffix(s, "}"), "{")
	return name, labels
}
