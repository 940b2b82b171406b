package store

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/thermofleet/thermo/protocol"
)

// BenchmarkPut compares storing 100 device records one transaction each
// (one fsync each) with storing them in one transaction: what a burst of
// devices coming back after a broker outage costs the controller.
func BenchmarkPut(b *testing.B) {
	devs := make([]Device, 100)
	for i := range devs {
		devs[i] = Device{ID: "d1", Replica: replica(protocol.Clock{4, 2}, protocol.Props{
			protocol.PropSetpoint: {Val: 21.5, W: protocol.Clock{4, 2}},
		}), Online: true, LastSeen: time.Now(), Telemetry: json.RawMessage(`{"v":1,"temp_c":20.31}`)}
		devs[i].ID = fmt.Sprintf("d%03d", i)
	}
	for _, bc := range []struct {
		name  string
		batch int
	}{{"one-per-tx", 1}, {"100-per-tx", 100}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open(b.TempDir())
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			b.ResetTimer()
			for range b.N {
				for i := 0; i < len(devs); i += bc.batch {
					if err := s.Put(devs[i : i+bc.batch]...); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*len(devs)), "µs/device")
		})
	}
}
