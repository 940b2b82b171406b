package metrics

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// BenchmarkScrape10k: one scrape of a controller that knows 10,000
// devices, each online with telemetry and a setpoint, one in ten with an
// alert: the fleet's Devices, the collectors and the text encoding, as
// Prometheus asks for it. Reports the page's size too.
func BenchmarkScrape10k(b *testing.B) {
	const n = 10000
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	now := time.Date(2026, 12, 4, 20, 0, 0, 0, time.UTC)
	recs := make([]store.Device, n)
	for i := range recs {
		r := protocol.NewReplica(protocol.ControllerSide)
		if err := r.Write(map[string]any{protocol.PropSetpoint: 20.5, protocol.PropMode: protocol.ModeHeat}, protocol.SrcController); err != nil {
			b.Fatal(err)
		}
		temp := 18 + float64(i%50)/10
		tm := protocol.Telemetry{TS: now, TempC: &temp, Heat: i%2 == 0, SensorOK: true}
		var alerts []protocol.Alert
		if i%10 == 0 {
			tm.Alerts = []string{protocol.AlertSensorFault}
			alerts = []protocol.Alert{{Code: protocol.AlertSensorFault, Since: now}}
		}
		payload, err := tm.Encode()
		if err != nil {
			b.Fatal(err)
		}
		recs[i] = store.Device{ID: fmt.Sprintf("device-%05d", i), Replica: r, Online: true, LastSeen: now, Telemetry: payload, Reported: alerts}
	}
	if err := st.Put(recs...); err != nil {
		b.Fatal(err)
	}
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	f, err := fleet.New(fleet.Options{Store: st, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	m := New(quiet)
	m.Watch(f, nil)
	h := m.Handler()
	req := httptest.NewRequest("GET", "/metrics", nil)
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	var size int
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
		size = w.Body.Len()
	}
	b.ReportMetric(float64(size)/1e6, "MB/scrape")
}
