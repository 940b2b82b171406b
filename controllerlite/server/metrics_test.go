package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// scrape GETs the controller's /metrics with the token (none when
// empty).
func scrape(t *testing.T, s *Server, token string) (int, string) {
	t.Helper()
	return testenv.Scrape(t, "http://"+s.HTTPAddr().String()+"/metrics", token)
}

// TestMetrics runs a controller with --metrics and a token, plays a
// device against its embedded broker, and checks what /metrics says over HTTP: the counts by kind and
// reason, the per-device series, the resync and commit histograms, the
// broker's figures, and the token rule.
func TestMetrics(t *testing.T) {
	const token = "s3cret-token"
	pki := testenv.NewPKI(t)
	cfg := embedded(pki, t.TempDir())
	cfg.HTTPToken, cfg.Metrics = token, true
	s := start(t, cfg)
	url := brokerURL(s.BrokerAddr())

	t.Run("token", func(t *testing.T) {
		for _, tc := range []struct {
			name, header string
			want         int
		}{
			{"none", "", http.StatusUnauthorized},
			{"wrong token", "Bearer nope", http.StatusUnauthorized},
			{"basic scheme", "Basic " + token, http.StatusUnauthorized},
			{"the token", "Bearer " + token, http.StatusOK},
		} {
			t.Run(tc.name, func(t *testing.T) {
				req, _ := http.NewRequest("GET", "http://"+s.HTTPAddr().String()+"/metrics", nil)
				if tc.header != "" {
					req.Header.Set("Authorization", tc.header)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != tc.want {
					t.Fatalf("status %d, want %d: %s", resp.StatusCode, tc.want, body)
				}
				if tc.want == http.StatusUnauthorized && strings.Contains(string(body), "controllerlite_") {
					t.Fatalf("metrics served without the token: %s", body)
				}
			})
		}
	})

	// A device comes online: the greeting goes out, and the device's
	// Event after applying it ends its resync.
	dev := pki.Connect(t, url, "d1")
	dev.Subscribe(t, "thermo/d1/cmd", 1)
	dev.Publish(t, "thermo/d1/status", 1, true, protocol.Status{Online: true}.Encode())
	greeting, _ := dev.WaitMatch(t, "the greeting", func(m testenv.Message) bool { return m.Topic == "thermo/d1/cmd" })
	g, _, err := protocol.DecodeMessage(greeting.Payload)
	if err != nil {
		t.Fatal(err)
	}
	c := g.VC[protocol.ControllerIdx]
	dev.Publish(t, "thermo/d1/event", 1, true, fmt.Appendf(nil,
		`{"v":1,"vc":[%d,1],"props":{"mode":{"val":"heat","w":[0,1]},"setpoint_c":{"val":20.5,"w":[0,1]}}}`, c))
	dev.Publish(t, "thermo/d1/telemetry", 0, false,
		[]byte(`{"v":1,"ts":"2026-12-04T20:00:00Z","temp_c":19.5,"heat":true,"cool":false,"sensor_ok":true,"alerts":["storage_error"]}`))
	// What the fleet refuses, one reason each, and a property rejected
	// alone.
	bad := []struct{ topic, payload string }{
		{"thermo/d1/event", `{not json`},
		{"thermo/d1/telemetry", `{"v":1,"pad":"` + strings.Repeat("x", protocol.MaxPayload) + `"}`},
		{"thermo/d1/event", `{"v":1,"vc":[4503599627370496,5],"props":{}}`},
		{"thermo/d1/event", fmt.Sprintf(`{"v":1,"vc":[%d,2],"props":{"setpoint_c":{"val":99,"w":[0,2]}}}`, c)},
	}
	for _, b := range bad {
		dev.Publish(t, b.topic, 1, false, []byte(b.payload))
	}
	want := []struct {
		name, labels string
		val          float64
	}{
		{"controllerlite_messages_received_total", "kind=event", 4},
		{"controllerlite_messages_received_total", "kind=status", 1},
		{"controllerlite_messages_received_total", "kind=telemetry", 2},
		{"controllerlite_messages_received_total", "kind=cmd", 1}, // the greeting, read back
		{"controllerlite_messages_received_total", "kind=unknown", 0},
		{"controllerlite_messages_rejected_total", "kind=event,reason=invalid", 1},
		{"controllerlite_messages_rejected_total", "kind=telemetry,reason=too_large", 1},
		{"controllerlite_messages_rejected_total", "kind=event,reason=clock_exhausted", 1},
		// bad_topic and reserved_id never get past the embedded broker's
		// ACL: fleet.TestRejectReasons has them.
		{"controllerlite_messages_rejected_total", "kind=event,reason=bad_topic", 0},
		{"controllerlite_messages_rejected_total", "kind=event,reason=other", 0},
		{"controllerlite_properties_rejected_total", "", 1},
		{"controllerlite_commands_published_total", "", 1},
		{"controllerlite_commands_owed", "", 0},
		{"controllerlite_ready", "", 1},
		{"controllerlite_broker_link_up", "", 1},
		{"controllerlite_devices", "", 1},
		{"controllerlite_devices_online", "", 1},
		{"controllerlite_device_online", "device=d1", 1},
		{"controllerlite_device_temperature_celsius", "device=d1", 19.5},
		{"controllerlite_device_setpoint_celsius", "device=d1", 20.5},
		{"controllerlite_device_heating", "device=d1", 1},
		{"controllerlite_device_cooling", "device=d1", 0},
		{"controllerlite_device_alerts", "device=d1", 1},
		{"controllerlite_device_alert", "code=storage_error,device=d1", 1},
		{"controllerlite_resync_duration_seconds", "", 1},
		{"controllerlite_broker_clients_connected", "", 1},
		{"controllerlite_broker_retained_messages", "", 3}, // d1's status, event and cmd
		{"controllerlite_history_up", "", 1},
		{"controllerlite_history_checking", "", 0},
	}
	var fams testenv.Metrics
	testenv.Eventually(t, testenv.WaitTimeout, "the metrics to show every message", func() (bool, string) {
		code, body := scrape(t, s, token)
		if code != http.StatusOK {
			return false, fmt.Sprintf("status %d", code)
		}
		fams = testenv.ParseMetrics(t, body)
		var off []string
		for _, w := range want {
			if v, ok := fams.Value(w.name, w.labels); !ok || v != w.val {
				off = append(off, fmt.Sprintf("%s{%s} = %v (present %v), want %v", w.name, w.labels, v, ok, w.val))
			}
		}
		return len(off) == 0, strings.Join(off, "; ")
	})
	if n, _ := fams.Value("controllerlite_commit_duration_seconds", ""); n < 1 {
		t.Errorf("commit histogram: %v commits, want at least the greeting's", n)
	}
	for _, name := range []string{"go_goroutines", "process_cpu_seconds_total", "promhttp_metric_handler_requests_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing: the Go, process and handler collectors belong on the registry", name)
		}
	}

	// The device goes offline: its telemetry no longer counts as now.
	dev.Publish(t, "thermo/d1/status", 1, true, protocol.Status{}.Encode())
	testenv.Eventually(t, testenv.WaitTimeout, "d1 offline in the metrics", func() (bool, string) {
		_, body := scrape(t, s, token)
		fams := testenv.ParseMetrics(t, body)
		on, _ := fams.Value("controllerlite_device_online", "device=d1")
		_, heating := fams.Value("controllerlite_device_heating", "device=d1")
		n, _ := fams.Value("controllerlite_devices_online", "")
		return on == 0 && !heating && n == 0, fmt.Sprintf("online %v, heating series %v, devices online %v", on, heating, n)
	})

	// The exposition passes promlint (names, units, _total, help).
	_, body := scrape(t, s, token)
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		if strings.HasPrefix(p.Metric, "controllerlite_") {
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
}

// TestMetricsOff: without --metrics there is no /metrics.
func TestMetricsOff(t *testing.T) {
	s := start(t, embedded(testenv.NewPKI(t), t.TempDir()))
	if code, body := scrape(t, s, ""); code != http.StatusNotFound {
		t.Fatalf("GET /metrics without --metrics: %d %s", code, body)
	}
}

// TestMetricsExternal: with an external broker the fleet's metrics are
// served and the embedded broker's are absent (Mosquitto has its own).
func TestMetricsExternal(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, protocol.ControllerID)
	s := start(t, Config{CAFile: pki.CAFile, CertFile: cert, KeyFile: key, DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", Broker: m.URL(), Metrics: true})
	testenv.Eventually(t, testenv.WaitTimeout, "the link up in the metrics", func() (bool, string) {
		code, body := scrape(t, s, "")
		fams := testenv.ParseMetrics(t, body)
		up, _ := fams.Value("controllerlite_broker_link_up", "")
		ready, _ := fams.Value("controllerlite_ready", "")
		_, embedded := fams["controllerlite_broker_clients_connected"]
		return code == http.StatusOK && up == 1 && ready == 1 && !embedded, fmt.Sprintf("status %d, link up %v, ready %v, embedded broker series %v", code, up, ready, embedded)
	})
}
