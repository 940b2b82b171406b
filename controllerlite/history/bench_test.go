package history

import (
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/protocol"
)

// year is a history holding a year of one device: 30 s telemetry
// recorded through Telemetry with the clock moved along, flushed and
// compacted every simulated hour as the background does every 15 minutes.
type year struct {
	h      *History
	clk    *clock
	end    time.Time
	sample int // samples recorded
}

const yearDays = 365

func fillYear(tb testing.TB, dir string) *year {
	tb.Helper()
	clk := &clock{t: base.Add(-yearDays * 24 * time.Hour)}
	h, err := Open(dir, Options{Now: clk.Now, Logger: quietLog, FlushEvery: time.Hour})
	if err != nil {
		tb.Fatal(err)
	}
	db := h.be.(*boltBackend).db
	// The fill measures space, not durability: no fsync per flush.
	h.writeMu.Lock()
	db.NoSync = true
	h.writeMu.Unlock()
	y := fillYearOf(tb, h, clk)
	h.writeMu.Lock()
	db.NoSync = false
	h.writeMu.Unlock()
	if err := db.Sync(); err != nil {
		tb.Fatal(err)
	}
	return y
}

// fillYearOf records the year into h, whose clock clk is at its start.
func fillYearOf(tb testing.TB, h *History, clk *clock) *year {
	tb.Helper()
	t0 := clk.Now()
	y := &year{h: h, clk: clk, end: base}
	props := protocol.Props{protocol.PropMode: {Val: protocol.ModeHeat}, protocol.PropSetpoint: {Val: 20.5}}
	heat := false
	for at := t0; at.Before(base); at = at.Add(30 * time.Second) {
		// A room that cools by day and is heated with a 0.5 °C
		// hysteresis: the outputs switch as a real one's do.
		x := float64(at.Unix()%86400) / 86400
		temp := math.Round((20+1.5*math.Sin(2*math.Pi*x)+float64(y.sample%7)/20)*100) / 100
		switch {
		case temp < 20:
			heat = true
		case temp > 20.5:
			heat = false
		}
		tm := protocol.Telemetry{V: 1, TS: at, TempC: &temp, Heat: heat, SensorOK: true}
		h.Telemetry("living-room", at, tm, props)
		y.sample++
		if at.Unix()%3600 == 0 {
			clk.Set(at)
			if err := h.Flush(); err != nil {
				tb.Fatal(err)
			}
			if at.Unix()%(6*3600) == 0 {
				if err := h.Compact(); err != nil {
					tb.Fatal(err)
				}
			}
		}
	}
	clk.Set(base)
	if err := h.Flush(); err != nil {
		tb.Fatal(err)
	}
	if err := h.Compact(); err != nil {
		tb.Fatal(err)
	}
	return y
}

// size is what the device's year occupies: the file, the bolt pages of
// its buckets, and the bytes of its keys and values.
type size struct {
	file, pages, inuse int64
	raw, buckets       int
	// rawInuse and bucketsInuse are the page bytes the raw samples and
	// the buckets use, with bolt's 16 bytes per key.
	rawInuse, bucketsInuse int64
}

func (s size) String() string {
	return fmt.Sprintf("file %d B, bolt pages %d B (%d B in use): %d buckets in %d B (%.1f B each), %d raw samples (the last 48 h) in %d B (%.1f B each)",
		s.file, s.pages, s.inuse, s.buckets, s.bucketsInuse, float64(s.bucketsInuse)/float64(s.buckets), s.raw, s.rawInuse, float64(s.rawInuse)/float64(s.raw))
}

func (y *year) size(tb testing.TB) size {
	tb.Helper()
	var s size
	err := y.h.be.(*boltBackend).db.View(func(tx *bbolt.Tx) error {
		st := tx.Bucket(bucketDevices).Stats()
		s.pages = int64(st.BranchAlloc + st.LeafAlloc)
		s.inuse = int64(st.BranchInuse + st.LeafInuse)
		dev := tx.Bucket(bucketDevices).Bucket([]byte("living-room"))
		rs, bs := dev.Bucket(subRaw).Stats(), dev.Bucket(subBuckets).Stats()
		s.rawInuse = int64(rs.BranchInuse + rs.LeafInuse)
		s.bucketsInuse = int64(bs.BranchInuse + bs.LeafInuse)
		return nil
	})
	if err != nil {
		tb.Fatal(err)
	}
	fi, err := os.Stat(y.h.Path())
	if err != nil {
		tb.Fatal(err)
	}
	s.file = fi.Size()
	s.raw, s.buckets = boltKit.count(tb, y.h, "living-room")
	return s
}

var (
	yearOnce sync.Once
	theYear  *year
	yearDir  string
)

// sharedYear fills one year for every benchmark of a run.
func sharedYear(b *testing.B) *year {
	yearOnce.Do(func() {
		dir, err := os.MkdirTemp("", "history-year")
		if err != nil {
			b.Fatal(err)
		}
		yearDir = dir
		start := time.Now()
		theYear = fillYear(b, dir)
		s := theYear.size(b)
		b.Logf("a year of one device (%d samples of 30 s telemetry) filled and compacted in %v: %s",
			theYear.sample, time.Since(start).Round(time.Millisecond), s)
	})
	return theYear
}

func TestMain(m *testing.M) {
	code := m.Run()
	if theYear != nil {
		theYear.h.Close()
		os.RemoveAll(yearDir)
	}
	os.Exit(code)
}

// BenchmarkHistoryQuery answers a year of one device for the last 30 and
// 365 days at the default step (6 h and 1 d: what the API's chart asks
// for), and at the finest step the API allows for each (15 min, 6 h).
func BenchmarkHistoryQuery(b *testing.B) {
	y := sharedYear(b)
	for _, bc := range []struct {
		name string
		days int
		step time.Duration
	}{
		{"30d-default", 30, 0}, {"30d-15m", 30, 15 * time.Minute},
		{"365d-default", 365, 0}, {"365d-6h", 365, 6 * time.Hour},
	} {
		b.Run(bc.name, func(b *testing.B) {
			from := y.end.Add(-time.Duration(bc.days) * 24 * time.Hour)
			var n int
			for b.Loop() {
				res, err := y.h.Query("living-room", from, y.end, bc.step)
				if err != nil {
					b.Fatal(err)
				}
				n = len(res.Points)
			}
			b.ReportMetric(float64(n), "points")
		})
	}
}

// BenchmarkHistorySize reports what a year of one device occupies.
func BenchmarkHistorySize(b *testing.B) {
	y := sharedYear(b)
	s := y.size(b)
	for b.Loop() {
	}
	b.ReportMetric(float64(s.file), "file-B/device-year")
	b.ReportMetric(float64(s.pages), "pages-B/device-year")
	b.ReportMetric(float64(s.inuse), "inuse-B/device-year")
	b.ReportMetric(float64(s.bucketsInuse)/float64(s.buckets), "B/bucket")
	b.ReportMetric(float64(s.rawInuse)/float64(s.raw), "B/raw-sample")
}

// BenchmarkHistoryTelemetry is the cost on the fleet's loop of one
// sample.
func BenchmarkHistoryTelemetry(b *testing.B) {
	clk := &clock{t: base}
	h := open(b, b.TempDir(), clk, Options{Buffer: 1 << 20, FlushEvery: time.Hour})
	temp := 20.5
	tm := protocol.Telemetry{V: 1, TS: base, TempC: &temp, Heat: true, SensorOK: true}
	props := protocol.Props{protocol.PropMode: {Val: protocol.ModeHeat}, protocol.PropSetpoint: {Val: 20.5}}
	i := 0
	b.ReportAllocs()
	for b.Loop() {
		if i++; i%(1<<19) == 0 {
			b.StopTimer()
			h.Flush()
			b.StartTimer()
		}
		h.Telemetry("living-room", base.Add(time.Duration(i)*time.Second), tm, props)
	}
}

// TestYearIsBounded fills a year of one device and checks what it
// occupies against the figure docs/history.md states.
func TestYearIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("fills a year of telemetry")
	}
	y := fillYear(t, t.TempDir())
	defer y.h.Close()
	s := y.size(t)
	t.Logf("a year of one device: %s", s)
	if s.buckets < (yearDays-2)*96-1 || s.buckets > yearDays*96 {
		t.Errorf("%d buckets, want about %d", s.buckets, (yearDays-2)*96)
	}
	if s.raw < 48*120 || s.raw > 48*120+1 {
		t.Errorf("%d raw samples, want the last 48 h: %d", s.raw, 48*120)
	}
	const bound = 2 << 20 // docs/history.md
	if s.file > bound {
		t.Errorf("file %d B, over the %d B stated", s.file, bound)
	}
}

// fleetYears is how many devices BenchmarkOpenFleetYear gives a year
// each: ~1.3 MB a device, so the default makes a ~130 MB file and
// -history-devices 3000 one of ~4 GB (a year of 10,000 is ~13 GB).
var fleetYears = flag.Int("history-devices", 100, "devices with a year of history each in BenchmarkOpenFleetYear")

// BenchmarkOpenFleetYear opens a history of a year of -history-devices
// devices (copies of one filled year) as a controller's start does, and
// reports how long Open kept the start waiting (s/open) and how long the
// check of every page took (s/check): past DefaultCheckWait the check
// goes on in the background and Open returns.
func BenchmarkOpenFleetYear(b *testing.B) {
	y := sharedYear(b)
	dir := b.TempDir()
	src := y.h.be.(*boltBackend).db
	path := filepath.Join(dir, FileName)
	dst, err := bbolt.Open(path, 0o600, &bbolt.Options{NoSync: true})
	if err != nil {
		b.Fatal(err)
	}
	err = src.View(func(stx *bbolt.Tx) error {
		one := stx.Bucket(bucketDevices).Bucket([]byte("living-room"))
		if err := dst.Update(func(tx *bbolt.Tx) error {
			meta, err := tx.CreateBucketIfNotExists([]byte("meta"))
			if err != nil {
				return err
			}
			if err := meta.Put([]byte("version"), []byte(schemaVersion)); err != nil {
				return err
			}
			_, err = tx.CreateBucketIfNotExists(bucketDevices)
			return err
		}); err != nil {
			return err
		}
		for i := 0; i < *fleetYears; i += 50 {
			if err := dst.Update(func(tx *bbolt.Tx) error {
				for j := i; j < min(i+50, *fleetYears); j++ {
					dev, err := tx.Bucket(bucketDevices).CreateBucket(fmt.Appendf(nil, "d%05d", j))
					if err != nil {
						return err
					}
					if err := copyBucket(dev, one); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil {
		err = dst.Sync()
	}
	dst.Close()
	if err != nil {
		b.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		b.Fatal(err)
	}
	var open, check time.Duration
	b.ResetTimer()
	for range b.N {
		began := time.Now()
		h, err := Open(dir, Options{Now: y.clk.Now, Logger: quietLog})
		if err != nil {
			b.Fatal(err)
		}
		open += time.Since(began)
		<-h.ready
		check += time.Since(began)
		if h.openErr != nil {
			b.Fatal(h.openErr)
		}
		h.bg.Wait() // the catch-up compaction
		h.Close()
	}
	b.ReportMetric(open.Seconds()/float64(b.N), "s/open")
	b.ReportMetric(check.Seconds()/float64(b.N), "s/check")
	b.ReportMetric(float64(fi.Size())/1e9, "GB")
	b.ReportMetric(0, "ns/op")
}

// copyBucket copies src's keys, values and nested buckets into dst.
func copyBucket(dst, src *bbolt.Bucket) error {
	return src.ForEach(func(k, v []byte) error {
		if v != nil {
			return dst.Put(k, v)
		}
		child, err := dst.CreateBucket(k)
		if err != nil {
			return err
		}
		return copyBucket(child, src.Bucket(k))
	})
}
