package metrics

import (
	"errors"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"periph.io/x/conn/v3/physic"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/hal"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// Stubs with fixed figures: firmware/runner's TestMetricsOnTheSimulatedBoard
// runs the real parts; this test pins each field to its series.
type stubLoop struct {
	s control.Snapshot
	c control.Counts
}

func (l stubLoop) Snapshot() control.Snapshot { return l.s }
func (l stubLoop) Counts() control.Counts     { return l.c }

type stubAgent struct {
	st         agent.Status
	ok, failed uint64
}

func (a stubAgent) Snapshot() agent.Status     { return a.st }
func (a stubAgent) Saves() (ok, failed uint64) { return a.ok, a.failed }

type stubLink struct {
	up bool
	st transport.Stats
}

func (l stubLink) Connected() bool        { return l.up }
func (l stubLink) Stats() transport.Stats { return l.st }

// t0 is 2026-12-04T20:00:00Z, Unix 1796414400.
var t0 = time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)

func sources() Sources {
	room := hal.Reading{Sensor: "room", Time: t0, Temperature: hal.Celsius(19.5), Humidity: 45 * physic.PercentRH, HasHumidity: true}
	floor := hal.Reading{Sensor: "floor", Time: t0, Err: errors.New("i2c: no ACK")}
	return Sources{
		Loop: stubLoop{
			s: control.Snapshot{Time: t0, Settings: control.Settings{SetpointC: 21, Mode: protocol.ModeHeat},
				Temperature: hal.Celsius(19.5), HasTemperature: true, SensorOK: true,
				Outputs: hal.Outputs{Heat: true}, Sensors: []hal.Reading{room, floor}, Iterations: 42},
			c: control.Counts{ReadErrors: []uint64{0, 7}, Outputs: []control.OutputCount{
				{Name: "heat", Switches: 3, OnFor: 90 * time.Second, MaxRun: 6 * time.Hour},
				{Name: "cool", Switches: 0, MaxRun: 6 * time.Hour},
				{Name: "fan", Switches: 1},
			}},
		},
		Agent: stubAgent{ok: 5, failed: 1, st: agent.Status{
			Next:     &protocol.Next{At: t0.Add(90 * time.Minute), SetpointC: 18},
			Alerts:   []protocol.Alert{{Code: protocol.AlertStorageError}},
			Counters: agent.Counters{Received: 9, Rejected: 1, RejectedProps: 2, Duplicates: 3, Applied: 4, Discarded: 0, EventsSent: 6},
		}},
		Link: stubLink{up: true, st: transport.Stats{Connects: 2, Losses: 1, Attempts: 4}},
	}
}

func TestCollector(t *testing.T) {
	reg := New(sources())
	tests := []struct{ name, want string }{
		{"thermostat_sensor_temperature_celsius", `thermostat_sensor_temperature_celsius{sensor="room"} 19.5`},
		{"thermostat_sensor_humidity_ratio", `thermostat_sensor_humidity_ratio{sensor="room"} 0.45`},
		{"thermostat_sensor_ok", "thermostat_sensor_ok{sensor=\"floor\"} 0\nthermostat_sensor_ok{sensor=\"room\"} 1"},
		{"thermostat_sensor_read_errors_total", "thermostat_sensor_read_errors_total{sensor=\"floor\"} 7\nthermostat_sensor_read_errors_total{sensor=\"room\"} 0"},
		{"thermostat_control_temperature_celsius", "thermostat_control_temperature_celsius 19.5"},
		{"thermostat_setpoint_celsius", "thermostat_setpoint_celsius 21"},
		{"thermostat_mode", "thermostat_mode{mode=\"auto\"} 0\nthermostat_mode{mode=\"cool\"} 0\nthermostat_mode{mode=\"heat\"} 1\nthermostat_mode{mode=\"off\"} 0"},
		{"thermostat_output_on", "thermostat_output_on{output=\"cool\"} 0\nthermostat_output_on{output=\"fan\"} 0\nthermostat_output_on{output=\"heat\"} 1"},
		{"thermostat_output_switches_total", "thermostat_output_switches_total{output=\"cool\"} 0\nthermostat_output_switches_total{output=\"fan\"} 1\nthermostat_output_switches_total{output=\"heat\"} 3"},
		{"thermostat_output_run_seconds", "thermostat_output_run_seconds{output=\"cool\"} 0\nthermostat_output_run_seconds{output=\"heat\"} 90"},
		{"thermostat_output_max_run_seconds", "thermostat_output_max_run_seconds{output=\"cool\"} 21600\nthermostat_output_max_run_seconds{output=\"heat\"} 21600"},
		{"thermostat_broker_connected", "thermostat_broker_connected 1"},
		{"thermostat_broker_connects_total", "thermostat_broker_connects_total 2"},
		{"thermostat_broker_connection_losses_total", "thermostat_broker_connection_losses_total 1"},
		{"thermostat_state_writes_total", "thermostat_state_writes_total 5"},
		{"thermostat_state_write_failures_total", "thermostat_state_write_failures_total 1"},
		{"thermostat_schedule_next_entry_timestamp_seconds", "thermostat_schedule_next_entry_timestamp_seconds 1796419800"},
		{"thermostat_schedule_next_setpoint_celsius", "thermostat_schedule_next_setpoint_celsius 18"},
		{"thermostat_alert", `thermostat_alert{code="storage_error"} 1`},
		{"thermostat_properties_rejected_total", "thermostat_properties_rejected_total 2"},
		{"thermostat_events_sent_total", "thermostat_events_sent_total 6"},
	}
	fams, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			exp := ""
			for _, f := range fams {
				if f.GetName() == tc.name {
					exp = "# HELP " + tc.name + " " + f.GetHelp() + "\n# TYPE " + tc.name + " " + strings.ToLower(f.GetType().String()) + "\n"
				}
			}
			if exp == "" {
				t.Fatalf("%s not gathered", tc.name)
			}
			if err := testutil.GatherAndCompare(reg, strings.NewReader(exp+tc.want+"\n"), tc.name); err != nil {
				t.Error(err)
			}
		})
	}

	// A control sensor without a valid reading: no control temperature.
	src := sources()
	l := src.Loop.(stubLoop)
	l.s.SensorOK = false
	src.Loop = l
	if n, err := testutil.GatherAndCount(New(src), "thermostat_control_temperature_celsius"); err != nil || n != 0 {
		t.Errorf("control temperature with the sensor not ok: %d series (%v)", n, err)
	}
}

// TestLint: names follow Prometheus's rules, and what is collected
// matches what is described.
func TestLint(t *testing.T) {
	problems, err := testutil.GatherAndLint(New(sources()))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(collector{sources()})
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// TestDocumented: docs/metrics.md lists exactly the metrics the
// thermostat serves.
func TestDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var docs []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(thermostat_[a-z_]+)` \\|").FindAllStringSubmatch(string(b), -1) {
		docs = append(docs, m[1])
	}
	slices.Sort(docs)
	fams, err := New(sources()).Gather()
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
	if !slices.Equal(served, docs) {
		t.Errorf("served and documented differ:\nserved     %v\ndocumented %v", served, docs)
	}
}
