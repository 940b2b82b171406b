package testenv

import (
	"io"
	"net/http"
	"slices"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scrape GETs a Prometheus endpoint over HTTP, with "Authorization: Bearer
// token" unless token is empty, and returns the status and the body.
func Scrape(t testing.TB, url, token string) (int, string) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// Metrics is a parsed scrape in the Prometheus text format.
type Metrics map[string]*dto.MetricFamily

// ParseMetrics parses a scrape, failing t on a format error.
func ParseMetrics(t testing.TB, body string) Metrics {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("parse the scrape: %v\n%s", err, body)
	}
	return fams
}

// Value is the value of the series of the metric name with exactly the
// labels given as "k=v,k=v" ("" for none); a histogram's value is its
// sample count. ok is false when there is no such series.
func (ms Metrics) Value(name, labels string) (v float64, ok bool) {
	fam, found := ms[name]
	if !found {
		return 0, false
	}
	var want []string
	if labels != "" {
		want = strings.Split(labels, ",")
	}
	slices.Sort(want)
	for _, m := range fam.GetMetric() {
		var got []string
		for _, l := range m.GetLabel() {
			got = append(got, l.GetName()+"="+l.GetValue())
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			continue
		}
		switch {
		case m.Gauge != nil:
			return m.GetGauge().GetValue(), true
		case m.Counter != nil:
			return m.GetCounter().GetValue(), true
		case m.Histogram != nil:
			return float64(m.GetHistogram().GetSampleCount()), true
		case m.Untyped != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}
