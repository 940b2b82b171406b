// Package metrics is the thermostat's Prometheus metrics, which `thermostat
// run --metrics-addr HOST:PORT` serves at /metrics.
//
// Every figure is read at scrape time from what the parts already keep:
// the control loop's snapshot and counts (sensor readings and read
// errors, settings, outputs, relay switches, run times), the agent's
// status and counters (alerts, the schedule's next entry, messages, state
// writes) and the broker connection's state and counts. Nothing is
// observed per reading or per message, and the registry is the
// thermostat's own, never the global one.
//
// The endpoint has no authentication: it says what the room's temperature
// is and whether the heating is on, nothing more, and changes nothing.
// On an address other than loopback it is served all the same (a
// Prometheus on another machine must reach it) with a warning in the log.
// docs/metrics.md lists every metric.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"periph.io/x/conn/v3/physic"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/control"
	"github.com/thermofleet/thermo/internal/promreg"
	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/transport"
)

// Namespace is the first word of every metric name of the thermostat.
const Namespace = "thermostat"

// Loop is the control loop as the metrics read it; *control.Loop is one.
type Loop interface {
	Snapshot() control.Snapshot
	Counts() control.Counts
}

// Agent is the sync agent as the metrics read it; *agent.Agent is one.
type Agent interface {
	Snapshot() agent.Status
	Saves() (ok, failed uint64)
}

// Link is the broker connection; *transport.Client is one.
type Link interface {
	Connected() bool
	Stats() transport.Stats
}

// Sources are the parts a scrape reads.
type Sources struct {
	Loop  Loop
	Agent Agent
	Link  Link
}

// New returns a registry of the thermostat's metrics, with the Go
// runtime's and the process's collectors.
func New(src Sources) *prometheus.Registry {
	return promreg.New(collector{src})
}

// Handler serves reg in the Prometheus text format, counting its scrapes.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	return promreg.Handler(reg, log)
}

// Listen opens the metrics listener on addr. The endpoint has no
// authentication: an address off loopback is allowed but logged as a
// warning.
func Listen(addr string, log *slog.Logger) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: listen on %s: %w", addr, err)
	}
	if ta, ok := ln.Addr().(*net.TCPAddr); !ok || !ta.IP.IsLoopback() {
		log.Warn("metrics served off loopback without authentication: anyone who reaches this address reads them (temperatures, outputs, alerts)", "addr", ln.Addr().String())
	}
	return ln, nil
}

// Serve serves h at /metrics on ln until ctx is done, then closes ln. It
// returns nil on cancellation.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", h)
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	select {
	case err := <-done:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv.Shutdown(sctx)
	if err := <-done; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

var (
	sensorTempDesc   = desc("sensor_temperature_celsius", "The sensor's latest valid reading; absent while its reading is not valid.", "sensor")
	sensorHumDesc    = desc("sensor_humidity_ratio", "The sensor's latest valid relative humidity, 0 to 1; absent when it has none.", "sensor")
	sensorOKDesc     = desc("sensor_ok", "1 while the sensor's latest reading is valid, else 0.", "sensor")
	sensorErrDesc    = desc("sensor_read_errors_total", "Failed or rejected reads of the sensor.", "sensor")
	controlTempDesc  = desc("control_temperature_celsius", "The control sensor's reading the loop controls with; absent while control_sensor_ok is 0.")
	controlOKDesc    = desc("control_sensor_ok", "1 while the control sensor has given a valid reading within sensor_timeout, else 0 (the outputs are then off, frost protection aside).")
	iterationsDesc   = desc("control_loop_iterations_total", "Passes of the control loop.")
	setpointDesc     = desc("setpoint_celsius", "The setpoint in force.")
	modeDesc         = desc("mode", "1 for the mode in force (off, heat, cool, auto), 0 for the others.", "mode")
	outputOnDesc     = desc("output_on", "1 while the output is driven on, else 0, for each wired output (heat, cool, fan).", "output")
	outputSwitchDesc = desc("output_switches_total", "Changes of the output as driven, on or off.", "output")
	outputRunDesc    = desc("output_run_seconds", "How long the output has been on without a break, on the loop's clock; 0 while off.", "output")
	outputMaxDesc    = desc("output_max_run_seconds", "The configured max_run of the output: on this long, the loop switches it off to rest.", "output")
	connectedDesc    = desc("broker_connected", "1 while the connection to the broker is up, else 0.")
	connectsDesc     = desc("broker_connects_total", "Connections to the broker made.")
	lossesDesc       = desc("broker_connection_losses_total", "Connections to the broker lost.")
	attemptsDesc     = desc("broker_connect_attempts_total", "Connection attempts, successful or not.")
	writesDesc       = desc("state_writes_total", "Writes of the sync state to the state directory.")
	writeFailDesc    = desc("state_write_failures_total", "Writes of the sync state that failed (the device then raises storage_error).")
	nextAtDesc       = desc("schedule_next_entry_timestamp_seconds", "When the schedule's next entry applies, in Unix seconds; absent while the schedule is off.")
	nextSPDesc       = desc("schedule_next_setpoint_celsius", "The setpoint the schedule's next entry sets; absent while the schedule is off.")
	alertDesc        = desc("alert", "1 for each active alert, by code.", "code")
	alertsDesc       = desc("alerts", "Active alerts.")
	receivedDesc     = desc("messages_received_total", "Messages from the broker handed to the agent.")
	rejectedDesc     = desc("messages_rejected_total", "Messages rejected whole (a bad payload or topic): nothing changed.")
	propsRejDesc     = desc("properties_rejected_total", "Single properties rejected from accepted messages.")
	duplicatesDesc   = desc("messages_duplicate_total", "Clocked messages already seen.")
	appliedDesc      = desc("commands_applied_total", "Commands that changed a property.")
	discardedDesc    = desc("commands_discarded_total", "Commands whose every value lost to newer or concurrent local writes.")
	eventsSentDesc   = desc("events_sent_total", "Events acknowledged by the broker.")
)

var allDescs = []*prometheus.Desc{sensorTempDesc, sensorHumDesc, sensorOKDesc, sensorErrDesc, controlTempDesc, controlOKDesc,
	iterationsDesc, setpointDesc, modeDesc, outputOnDesc, outputSwitchDesc, outputRunDesc, outputMaxDesc, connectedDesc,
	connectsDesc, lossesDesc, attemptsDesc, writesDesc, writeFailDesc, nextAtDesc, nextSPDesc, alertDesc, alertsDesc,
	receivedDesc, rejectedDesc, propsRejDesc, duplicatesDesc, appliedDesc, discardedDesc, eventsSentDesc}

type collector struct{ src Sources }

func (collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	gauge, counter := promreg.Emit(ch).Gauge, promreg.Emit(ch).Counter

	snap := c.src.Loop.Snapshot()
	counts := c.src.Loop.Counts()
	for i, r := range snap.Sensors {
		ok := r.OK() && !r.Time.IsZero()
		gauge(sensorOKDesc, promreg.Bool(ok), r.Sensor)
		if ok {
			gauge(sensorTempDesc, r.Temperature.Celsius(), r.Sensor)
			if r.HasHumidity {
				gauge(sensorHumDesc, float64(r.Humidity)/float64(100*physic.PercentRH), r.Sensor)
			}
		}
		if i < len(counts.ReadErrors) {
			counter(sensorErrDesc, counts.ReadErrors[i], r.Sensor)
		}
	}
	// As in telemetry: a stale value must not pass for a reading.
	if snap.HasTemperature && snap.SensorOK {
		gauge(controlTempDesc, snap.Temperature.Celsius())
	}
	gauge(controlOKDesc, promreg.Bool(snap.SensorOK))
	counter(iterationsDesc, snap.Iterations)
	gauge(setpointDesc, snap.Settings.SetpointC)
	for _, m := range protocol.Modes {
		gauge(modeDesc, promreg.Bool(snap.Settings.Mode == m), m)
	}
	on := map[string]bool{"heat": snap.Outputs.Heat, "cool": snap.Outputs.Cool, "fan": snap.Outputs.Fan}
	for _, o := range counts.Outputs {
		gauge(outputOnDesc, promreg.Bool(on[o.Name]), o.Name)
		counter(outputSwitchDesc, o.Switches, o.Name)
		if o.MaxRun > 0 {
			gauge(outputRunDesc, o.OnFor.Seconds(), o.Name)
			gauge(outputMaxDesc, o.MaxRun.Seconds(), o.Name)
		}
	}

	gauge(connectedDesc, promreg.Bool(c.src.Link.Connected()))
	ls := c.src.Link.Stats()
	counter(connectsDesc, uint64(ls.Connects))
	counter(lossesDesc, uint64(ls.Losses))
	counter(attemptsDesc, uint64(ls.Attempts))

	st := c.src.Agent.Snapshot()
	ok, failed := c.src.Agent.Saves()
	counter(writesDesc, ok)
	counter(writeFailDesc, failed)
	if st.Next != nil {
		gauge(nextAtDesc, float64(st.Next.At.UnixMilli())/1000)
		gauge(nextSPDesc, st.Next.SetpointC)
	}
	gauge(alertsDesc, float64(len(st.Alerts)))
	for _, a := range st.Alerts {
		gauge(alertDesc, 1, a.Code)
	}
	cs := st.Counters
	counter(receivedDesc, cs.Received)
	counter(rejectedDesc, cs.Rejected)
	counter(propsRejDesc, cs.RejectedProps)
	counter(duplicatesDesc, cs.Duplicates)
	counter(appliedDesc, cs.Applied)
	counter(discardedDesc, cs.Discarded)
	counter(eventsSentDesc, cs.EventsSent)
}
