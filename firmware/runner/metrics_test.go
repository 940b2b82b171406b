package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/thermofleet/thermo/firmware/config"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/hal/sim"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// want is one expected series of a scrape.
type want struct {
	name, labels string
	val          float64
}

// waitMetrics scrapes url until every series has its value.
func waitMetrics(t *testing.T, url, what string, ws []want) testenv.Metrics {
	t.Helper()
	var ms testenv.Metrics
	testenv.Eventually(t, testenv.WaitTimeout, what, func() (bool, string) {
		code, body := testenv.Scrape(t, url, "")
		if code != http.StatusOK {
			return false, fmt.Sprintf("status %d: %s", code, body)
		}
		ms = testenv.ParseMetrics(t, body)
		var off []string
		for _, w := range ws {
			if v, ok := ms.Value(w.name, w.labels); !ok || v != w.val {
				off = append(off, fmt.Sprintf("%s{%s} = %v (present %v), want %v", w.name, w.labels, v, ok, w.val))
			}
		}
		return len(off) == 0, strings.Join(off, "; ")
	})
	return ms
}

// TestMetricsOnTheSimulatedBoard runs the thermostat with --metrics-addr
// on a simulated board against the embedded broker and reads /metrics
// over HTTP as the heating goes on, the sensor fails and the broker goes
// away.
func TestMetricsOnTheSimulatedBoard(t *testing.T) {
	pki := testenv.NewPKI(t)
	b, url := startBroker(t, pki)

	cert, key := pki.Client(t, "t1")
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Broker, cfg.CA, cfg.Cert, cfg.Key = url, pki.CAFile, cert, key
	cfg.HAL = config.HALSim
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.ControlSocket = filepath.Join(dir, "ctl.sock")
	cfg.MetricsAddr = "127.0.0.1:0"
	cfg.SyncTimeout = 100 * time.Millisecond
	cfg.Control.Interval = 100 * time.Millisecond
	cfg.Control.SensorTimeout = time.Second
	cfg.Control.Heat.MinOff = time.Millisecond
	cfg.Control.Heat.MaxRun = 90 * time.Minute
	sp := 21.0
	cfg.Schedule = &protocol.Schedule{Enabled: true, TZ: "UTC", Week: map[string][]protocol.Entry{}}
	for _, day := range []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"} {
		cfg.Schedule.Week[day] = []protocol.Entry{{At: "00:00", SetpointC: &sp}, {At: "12:00", SetpointC: &sp}}
	}
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	board, err := sim.New(sim.Options{InitialC: 18})
	if err != nil {
		t.Fatal(err)
	}
	th, err := New(cfg, Options{Logger: quiet(), Board: board, BoardClock: board.Clock()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- th.Run(ctx) }()
	defer func() {
		cancel()
		<-done
	}()
	metricsURL := "http://" + th.MetricsAddr().String() + "/metrics"
	sensor := th.Loop().ControlSensor()

	reqCtx, reqCancel := context.WithTimeout(context.Background(), testenv.WaitTimeout)
	defer reqCancel()
	testenv.WaitFor(t, "the first boot's rejoin", func() bool { return !th.Agent().Snapshot().Rejoining })
	if _, err := localctl.Do(reqCtx, cfg.ControlSocket, localctl.Request{Op: localctl.OpSet, Set: map[string]any{"setpoint_c": sp, "mode": "heat"}}); err != nil {
		t.Fatal(err)
	}
	// 18 °C, setpoint 21, heat: the heat goes on.
	ms := waitMetrics(t, metricsURL, "heating", []want{
		{"thermostat_setpoint_celsius", "", 21},
		{"thermostat_mode", "mode=heat", 1},
		{"thermostat_mode", "mode=off", 0},
		{"thermostat_output_on", "output=heat", 1},
		{"thermostat_output_on", "output=cool", 0},
		{"thermostat_output_switches_total", "output=heat", 1},
		{"thermostat_output_max_run_seconds", "output=heat", cfg.Control.Heat.MaxRun.Seconds()},
		{"thermostat_sensor_ok", "sensor=" + sensor, 1},
		{"thermostat_sensor_read_errors_total", "sensor=" + sensor, 0},
		{"thermostat_control_sensor_ok", "", 1},
		{"thermostat_broker_connected", "", 1},
		{"thermostat_broker_connects_total", "", 1},
		{"thermostat_broker_connection_losses_total", "", 0},
		{"thermostat_state_write_failures_total", "", 0},
		{"thermostat_alerts", "", 0},
		{"thermostat_schedule_next_setpoint_celsius", "", 21},
	})
	if v, ok := ms.Value("thermostat_sensor_temperature_celsius", "sensor="+sensor); !ok || v < 17 || v > 19 {
		t.Errorf("sensor temperature %v (present %v), want the room's 18 °C", v, ok)
	}
	if v, _ := ms.Value("thermostat_state_writes_total", ""); v < 1 {
		t.Errorf("state writes %v: the local set was saved", v)
	}
	now := float64(board.Clock().Now().Unix())
	if at, ok := ms.Value("thermostat_schedule_next_entry_timestamp_seconds", ""); !ok || at <= now || at > now+12*3600 {
		t.Errorf("next schedule entry at %v (present %v), want within 12 h of %v", at, ok, now)
	}
	testenv.Eventually(t, testenv.WaitTimeout, "the heat's run time counting", func() (bool, string) {
		_, body := testenv.Scrape(t, metricsURL, "")
		v, _ := testenv.ParseMetrics(t, body).Value("thermostat_output_run_seconds", "output=heat")
		return v > 0, fmt.Sprint(v)
	})

	// The sensor fails: its reads count as errors, then the loop calls it
	// a fault, switches the heat off and raises sensor_fault.
	board.SetSensorFault(errors.New("unplugged"))
	ms = waitMetrics(t, metricsURL, "the sensor fault", []want{
		{"thermostat_sensor_ok", "sensor=" + sensor, 0},
		{"thermostat_control_sensor_ok", "", 0},
		{"thermostat_output_on", "output=heat", 0},
		{"thermostat_output_run_seconds", "output=heat", 0},
		{"thermostat_output_switches_total", "output=heat", 2},
		{"thermostat_alert", "code=" + protocol.AlertSensorFault, 1},
		{"thermostat_alerts", "", 1},
	})
	if v, _ := ms.Value("thermostat_sensor_read_errors_total", "sensor="+sensor); v < 1 {
		t.Errorf("read errors %v after the fault", v)
	}
	if _, ok := ms.Value("thermostat_sensor_temperature_celsius", "sensor="+sensor); ok {
		t.Error("a failed sensor still has a temperature")
	}

	// The broker goes away: the thermostat says so and keeps serving.
	b.Close()
	waitMetrics(t, metricsURL, "the broker gone", []want{
		{"thermostat_broker_connected", "", 0},
		{"thermostat_broker_connection_losses_total", "", 1},
	})

	_, body := testenv.Scrape(t, metricsURL, "")
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "thermostat_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}

	// A clean stop closes the endpoint.
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	done <- nil
	if c, err := net.Dial("tcp", th.MetricsAddr().String()); err == nil {
		c.Close()
		t.Error("metrics still served after the stop")
	}
}

// TestMetricsAddrTaken: a taken --metrics-addr fails the start, naming it.
func TestMetricsAddrTaken(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	pki := testenv.NewPKI(t)
	cert, key := pki.Client(t, "t1")
	dir := t.TempDir()
	cfg := config.Default()
	cfg.Broker, cfg.CA, cfg.Cert, cfg.Key = "mqtts://localhost:1", pki.CAFile, cert, key
	cfg.HAL = config.HALSim
	cfg.StateDir = filepath.Join(dir, "state")
	cfg.MetricsAddr = ln.Addr().String()
	board, err := sim.New(sim.Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(cfg, Options{Logger: quiet(), Board: board, BoardClock: board.Clock(), NoControlSocket: true})
	if err == nil || !strings.Contains(err.Error(), "metrics: listen on "+cfg.MetricsAddr) {
		t.Fatalf("New with a taken metrics address: %v", err)
	}
}
