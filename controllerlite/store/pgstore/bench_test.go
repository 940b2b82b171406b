package pgstore

import (
	"fmt"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/controllerlite/store/storetest"
	"github.com/thermofleet/thermo/internal/testenv"
)

// BenchmarkPut is store's BenchmarkPut on PostgreSQL: 100 device records
// one transaction each, or all in one, on a throwaway cluster of this
// machine (fsync on): what the write rate of a controller costs the
// database, for docs/scale.md.
func BenchmarkPut(b *testing.B) {
	pg := testenv.StartPostgres(b)
	devs := make([]store.Device, 100)
	for i := range devs {
		devs[i] = storetest.Sample()[0]
		devs[i].ID = fmt.Sprintf("d%03d", i)
		devs[i].LastSeen = time.Now()
	}
	for _, bc := range []struct {
		name  string
		batch int
	}{{"one-per-tx", 1}, {"100-per-tx", 100}} {
		b.Run(bc.name, func(b *testing.B) {
			s, err := Open(ctx, pg.NewDatabase(b))
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
