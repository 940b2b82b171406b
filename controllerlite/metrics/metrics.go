// Package metrics is the controller's Prometheus metrics, which
// `controllerlite serve --metrics` serves at /metrics behind the API's
// authentication.
//
// Everything is registered on a registry of its own (never the global
// one), so two controllers in one process, or two tests, do not share
// counters. Most figures are read at scrape time from what the fleet and
// the broker already keep (fleet.Status, Counts and Devices, broker.Stats):
// a message costs the fleet nothing beyond its counts. Only the two
// timings, commit and resync, are observed as they happen, through the
// fleet.Meter this package implements.
//
// Per-device series carry one label, device, so a fleet of 10,000 devices
// makes 10,000 series per metric and no more; alert codes add one series
// per active alert. docs/metrics.md lists every metric.
package metrics

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/internal/promreg"
)

// Namespace is the first word of every metric name of the controller.
const Namespace = "controllerlite"

// Fleet is what the metrics read from the fleet; *fleet.Fleet is one.
type Fleet interface {
	Status() fleet.Status
	Counts() fleet.Counts
	Devices() []fleet.Device
}

// Broker is the embedded broker as the metrics see it; *broker.Broker is
// one.
type Broker interface {
	Stats() broker.Stats
}

// History is the telemetry history as the metrics see it;
// *history.History is one.
type History interface {
	Stats() history.Stats
}

// Buckets of the two histograms, in seconds. A commit is one bbolt
// transaction (an fsync) plus in-process publishes: milliseconds, and
// seconds only when the disk stalls. A resync crosses the network twice
// and includes the device's own store write.
var (
	CommitBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5}
	ResyncBuckets = []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
)

// Metrics is the controller's registry. It is the fleet's Meter: give it
// to fleet.Options.Meter, then Watch the fleet once it exists.
type Metrics struct {
	reg    *prometheus.Registry
	commit prometheus.Histogram
	resync prometheus.Histogram
	log    *slog.Logger
}

// New returns a registry holding the Go runtime's and the process's
// collectors and the two timing histograms.
func New(log *slog.Logger) *Metrics {
	if log == nil {
		log = slog.Default()
	}
	m := &Metrics{
		log: log,
		commit: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "commit_duration_seconds",
			Help:    "Time to commit one batch of the fleet: its store transaction (its Commands are published after, without holding the fleet).",
			Buckets: CommitBuckets,
		}),
		resync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: Namespace, Name: "resync_duration_seconds",
			Help:    "Time from a device's live status online to its first Event whose clock has seen the controller's greeting (vc[0] >= the greeting's vc[0]).",
			Buckets: ResyncBuckets,
		}),
	}
	m.reg = promreg.New(m.commit, m.resync)
	return m
}

// Committed is fleet.Meter's.
func (m *Metrics) Committed(d time.Duration) { m.commit.Observe(d.Seconds()) }

// Resynced is fleet.Meter's.
func (m *Metrics) Resynced(_ string, d time.Duration) { m.resync.Observe(d.Seconds()) }

var _ fleet.Meter = (*Metrics)(nil)

// Watch registers the collectors that read f, and b's figures when b is
// not nil (the embedded broker; an external one has its own metrics).
func (m *Metrics) Watch(f Fleet, b Broker) {
	m.reg.MustRegister(fleetCollector{f})
	if b != nil {
		m.reg.MustRegister(brokerCollector{b})
	}
}

// WatchHistory registers the collector that reads h.
func (m *Metrics) WatchHistory(h History) {
	m.reg.MustRegister(historyCollector{h})
}

// Registry is the registry, for tests and for adding collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus text format (or
// OpenMetrics, when asked), counting its scrapes
// (promhttp_metric_handler_requests_total). A collector's error is logged
// and answered with 500, never half a page. Call it once.
func (m *Metrics) Handler() http.Handler {
	return promreg.Handler(m.reg, m.log)
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", name), help, labels, nil)
}

var (
	devicesDesc       = desc("devices", "Devices the controller knows.")
	devicesOnlineDesc = desc("devices_online", "Devices whose latest status is online.")
	readyDesc         = desc("ready", "1 once the controller has read the broker's retained state, else 0.")
	linkUpDesc        = desc("broker_link_up", "1 while the fleet's link to the broker is up, else 0.")
	receivedDesc      = desc("messages_received_total", "Messages handed to the fleet, by kind (the topic's last level; unknown when it names none).", "kind")
	rejectedDesc      = desc("messages_rejected_total", "Messages rejected whole, by kind and reason.", "kind", "reason")
	propsRejectedDesc = desc("properties_rejected_total", "Single properties rejected from accepted messages (a bad value or stamp).")
	publishedDesc     = desc("commands_published_total", "Commands handed to the broker.")
	owedDesc          = desc("commands_owed", "Devices with a Command not yet handed to the broker.")

	devOnlineDesc   = desc("device_online", "1 while the device's latest status is online, else 0.", "device")
	devTempDesc     = desc("device_temperature_celsius", "The device's control temperature in its latest telemetry; absent while offline or without a valid reading.", "device")
	devSetpointDesc = desc("device_setpoint_celsius", "The setpoint the controller holds for the device.", "device")
	devHeatingDesc  = desc("device_heating", "1 while the device's latest telemetry has the heat output on, else 0; absent while offline.", "device")
	devCoolingDesc  = desc("device_cooling", "1 while the device's latest telemetry has the cool output on, else 0; absent while offline.", "device")
	devAlertsDesc   = desc("device_alerts", "Active alerts of the device, reported by it or seen by the controller.", "device")
	devAlertDesc    = desc("device_alert", "1 for each alert active on the device, by code (duplicate_identity, sensor_fault, storage_error, tls_refused, or a newer device's own).", "device", "code")
	devLastSeenDesc = desc("device_last_seen_timestamp_seconds", "When a live message last came from the device, in Unix seconds.", "device")
	devCertDesc     = desc("device_certificate_expiry_timestamp_seconds", "When the device's certificate ends, as its telemetry reports it, in Unix seconds.", "device")

	clientsDesc  = desc("broker_clients_connected", "Network clients connected to the embedded broker.")
	retainedDesc = desc("broker_retained_messages", "Retained messages the embedded broker holds.")
	brRecvDesc   = desc("broker_messages_received_total", "PUBLISH packets the embedded broker received from network clients.")
	brSentDesc   = desc("broker_messages_sent_total", "PUBLISH packets the embedded broker sent to network clients.")
	brDropDesc   = desc("broker_messages_dropped_total", "PUBLISH packets the embedded broker dropped because a client was too slow to take them.")
	tlsHSDesc    = desc("broker_tls_handshakes_total", "TLS handshakes the embedded broker's network clients completed.")
	tlsResDesc   = desc("broker_tls_resumed_total", "Of those, the handshakes that resumed an earlier session instead of exchanging certificates.")

	histUpDesc       = desc("history_up", "1 while the telemetry history takes samples; 0 while its file is checked after a start, or when it could not be opened then (logged with the cure).")
	histCheckingDesc = desc("history_checking", "1 while the telemetry history's file is checked after a start, else 0.")
	histWrittenDesc  = desc("history_samples_written_total", "Telemetry samples written to the history.")
	histDroppedDesc  = desc("history_samples_dropped_total", "Telemetry samples lost: the buffer was full (a slow, full or failing disk, or a long check after a start) or their write failed.")
	histPendingDesc  = desc("history_samples_pending", "Telemetry samples waiting to be written.")
)

// fleetCollector reads the fleet at scrape time.
type fleetCollector struct{ f Fleet }

func (fleetCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{devicesDesc, devicesOnlineDesc, readyDesc, linkUpDesc, receivedDesc, rejectedDesc,
		propsRejectedDesc, publishedDesc, owedDesc, devOnlineDesc, devTempDesc, devSetpointDesc, devHeatingDesc,
		devCoolingDesc, devAlertsDesc, devAlertDesc, devLastSeenDesc, devCertDesc} {
		ch <- d
	}
}

func (c fleetCollector) Collect(ch chan<- prometheus.Metric) {
	gauge, counter := promreg.Emit(ch).Gauge, promreg.Emit(ch).Counter
	st := c.f.Status()
	gauge(readyDesc, promreg.Bool(st.Ready))
	gauge(linkUpDesc, promreg.Bool(st.Connected))
	counter(propsRejectedDesc, st.PropsRejected)
	counter(publishedDesc, st.Published)
	gauge(owedDesc, float64(st.Owed))
	counts := c.f.Counts()
	for _, kind := range fleet.CountedKinds {
		counter(receivedDesc, counts.Received[kind], kind)
		for _, reason := range fleet.RejectReasons {
			counter(rejectedDesc, counts.Rejected[kind][reason], kind, reason)
		}
	}

	devs := c.f.Devices()
	online := 0
	for _, d := range devs {
		if d.Online {
			online++
		}
		gauge(devOnlineDesc, promreg.Bool(d.Online), d.ID)
		if sp, ok := d.Props.Setpoint(); ok {
			gauge(devSetpointDesc, sp, d.ID)
		}
		gauge(devAlertsDesc, float64(len(d.Alerts)), d.ID)
		for i, a := range d.Alerts {
			// Sorted by code; a repeated code would be a duplicate series.
			if i == 0 || a.Code != d.Alerts[i-1].Code {
				gauge(devAlertDesc, 1, d.ID, a.Code)
			}
		}
		if d.CertExpires != nil {
			gauge(devCertDesc, float64(d.CertExpires.Unix()), d.ID)
		}
		if d.LastSeen != nil {
			gauge(devLastSeenDesc, float64(d.LastSeen.UnixMilli())/1000, d.ID)
		}
		// The latest telemetry of a device that went offline describes
		// a past moment: an output seen on then would look on forever.
		if !d.Online || len(d.Telemetry) == 0 {
			continue
		}
		var t outputs
		if err := json.Unmarshal(d.Telemetry, &t); err != nil {
			continue // the fleet stores only telemetry it decoded
		}
		if t.TempC != nil {
			gauge(devTempDesc, *t.TempC, d.ID)
		}
		gauge(devHeatingDesc, promreg.Bool(t.Heat), d.ID)
		gauge(devCoolingDesc, promreg.Bool(t.Cool), d.ID)
	}
	// From the same list as the per-device series, so the two agree.
	gauge(devicesDesc, float64(len(devs)))
	gauge(devicesOnlineDesc, float64(online))
}

// outputs are the fields of protocol.Telemetry the per-device series
// read: decoding only these (no time, no sensors) keeps a scrape of
// 10,000 devices cheap.
type outputs struct {
	TempC *float64 `json:"temp_c"`
	Heat  bool     `json:"heat"`
	Cool  bool     `json:"cool"`
}

// brokerCollector reads the embedded broker at scrape time.
type brokerCollector struct{ b Broker }

func (brokerCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{clientsDesc, retainedDesc, brRecvDesc, brSentDesc, brDropDesc, tlsHSDesc, tlsResDesc} {
		ch <- d
	}
}

func (c brokerCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.b.Stats()
	ch <- prometheus.MustNewConstMetric(clientsDesc, prometheus.GaugeValue, float64(s.ClientsConnected))
	ch <- prometheus.MustNewConstMetric(retainedDesc, prometheus.GaugeValue, float64(s.Retained))
	ch <- prometheus.MustNewConstMetric(brRecvDesc, prometheus.CounterValue, float64(s.MessagesReceived))
	ch <- prometheus.MustNewConstMetric(brSentDesc, prometheus.CounterValue, float64(s.MessagesSent))
	ch <- prometheus.MustNewConstMetric(brDropDesc, prometheus.CounterValue, float64(s.MessagesDropped))
	ch <- prometheus.MustNewConstMetric(tlsHSDesc, prometheus.CounterValue, float64(s.TLSHandshakes))
	ch <- prometheus.MustNewConstMetric(tlsResDesc, prometheus.CounterValue, float64(s.TLSResumed))
}

// historyCollector reads the telemetry history at scrape time.
type historyCollector struct{ h History }

func (historyCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{histUpDesc, histCheckingDesc, histWrittenDesc, histDroppedDesc, histPendingDesc} {
		ch <- d
	}
}

func (c historyCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.h.Stats()
	ch <- prometheus.MustNewConstMetric(histUpDesc, prometheus.GaugeValue, promreg.Bool(!s.Checking && !s.Failed))
	ch <- prometheus.MustNewConstMetric(histCheckingDesc, prometheus.GaugeValue, promreg.Bool(s.Checking))
	ch <- prometheus.MustNewConstMetric(histWrittenDesc, prometheus.CounterValue, float64(s.Written))
	ch <- prometheus.MustNewConstMetric(histDroppedDesc, prometheus.CounterValue, float64(s.Dropped))
	ch <- prometheus.MustNewConstMetric(histPendingDesc, prometheus.GaugeValue, float64(s.Pending))
}
