// Package promreg holds what the controller's and the thermostat's
// Prometheus metrics share: a registry of their own (never the global
// default, so each program and each test has its own) with the Go
// runtime's and the process's collectors, its HTTP handler, and the few
// helpers their scrape-time collectors write samples with.
package promreg

import (
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// New returns a registry holding the Go runtime's and the process's
// collectors and cs.
func New(cs ...prometheus.Collector) *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(cs...)
	return reg
}

// Handler serves reg in the Prometheus text format (or OpenMetrics, when
// asked), counting its scrapes (promhttp_metric_handler_requests_total).
// A collector's error is logged and answered with 500, never half a page.
// Call it once per registry.
func Handler(reg *prometheus.Registry, log *slog.Logger) http.Handler {
	return promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(log.Handler(), slog.LevelError),
		ErrorHandling: promhttp.HTTPErrorOnError,
		Registry:      reg,
	}))
}

// Emit writes constant samples to a collector's channel, read at scrape
// time from the program's own state (no bookkeeping per message).
type Emit chan<- prometheus.Metric

// Gauge writes a gauge sample.
func (e Emit) Gauge(d *prometheus.Desc, v float64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// Counter writes a counter sample.
func (e Emit) Counter(d *prometheus.Desc, v uint64, labels ...string) {
	e <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

// Bool is a 0/1 gauge value.
func Bool(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
