package history

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/controllerlite/store/pgstore"
	"github.com/thermofleet/thermo/internal/testenv"
)

// kit is one backend for the tests that hold for both: a place to keep a
// history (a directory, a database), opening one there, and looking at
// what it stored.
type kit struct {
	name string
	// place returns a fresh place: a temporary directory, a database.
	place func(t testing.TB) string
	// openAt opens the history at place; its Close is the test's.
	openAt func(place string, o Options) (*History, func(), error)
	// count returns how many raw samples and buckets a device has stored.
	count func(t testing.TB, h *History, id string) (raw, buckets int)
	// has reports whether a device is known at all.
	has func(t testing.TB, h *History, id string) bool
	// putRaw stores a raw value as it is, bypassing the encoding.
	putRaw func(t testing.TB, h *History, id string, ms int64, v []byte)
}

// open opens a history at place on clk, closed when the test ends.
func (k *kit) open(t testing.TB, place string, clk *clock, o Options) *History {
	t.Helper()
	o.Now = clk.Now
	if o.Logger == nil {
		o.Logger = quietLog
	}
	h, closeFn, err := k.openAt(place, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(closeFn)
	return h
}

// bothTests are the tests every backend passes.
var bothTests = []struct {
	name string
	fn   func(t *testing.T, k *kit)
}{
	{"Aggregation", testAggregation},
	{"CompactionMatchesRaw", testCompactionMatchesRaw},
	{"IncrementalCompaction", testIncrementalCompaction},
	{"Retention", testRetention},
	{"Restart", testRestart},
	{"Delete", testDelete},
	{"CompactBadValue", testCompactBadValue},
}

func TestBolt(t *testing.T) {
	for _, tc := range bothTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, boltKit) })
	}
}

// TestPostgres runs the same tests on a throwaway PostgreSQL cluster, a
// database each.
func TestPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	k := pgKit(pg)
	for _, tc := range bothTests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, k) })
	}
	t.Run("SameMillisecond", func(t *testing.T) { testSameMillisecond(t, k) })
	t.Run("TwoInstances", func(t *testing.T) { testTwoInstances(t, k) })
	t.Run("Year", func(t *testing.T) { testPostgresYear(t, k) })
	t.Run("DatabaseDown", func(t *testing.T) { testDatabaseDown(t, k, pg) })
}

// open opens a bbolt history in dir on clk (the tests of this backend
// only).
func open(t testing.TB, dir string, clk *clock, o Options) *History {
	return boltKit.open(t, dir, clk, o)
}

var boltKit = &kit{
	name:  "bbolt",
	place: func(t testing.TB) string { return t.TempDir() },
	openAt: func(dir string, o Options) (*History, func(), error) {
		h, err := Open(dir, o)
		if err != nil {
			return nil, nil, err
		}
		return h, func() { h.Close() }, nil
	},
	count: func(t testing.TB, h *History, id string) (raw, buckets int) {
		t.Helper()
		err := h.be.(*boltBackend).db.View(func(tx *bbolt.Tx) error {
			dev := tx.Bucket(bucketDevices).Bucket([]byte(id))
			if dev == nil {
				return nil
			}
			if b := dev.Bucket(subRaw); b != nil {
				raw = b.Stats().KeyN
			}
			if b := dev.Bucket(subBuckets); b != nil {
				buckets = b.Stats().KeyN
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		return raw, buckets
	},
	has: func(t testing.TB, h *History, id string) bool {
		var ok bool
		h.be.(*boltBackend).db.View(func(tx *bbolt.Tx) error {
			ok = tx.Bucket(bucketDevices).Bucket([]byte(id)) != nil
			return nil
		})
		return ok
	},
	putRaw: func(t testing.TB, h *History, id string, ms int64, v []byte) {
		t.Helper()
		if err := h.be.(*boltBackend).db.Update(func(tx *bbolt.Tx) error {
			return tx.Bucket(bucketDevices).Bucket([]byte(id)).Bucket(subRaw).Put(rawKey(ms), v)
		}); err != nil {
			t.Fatal(err)
		}
	},
}

// pgKit keeps each test's history in a database of its own on pg; the
// store opened beside it (as the server does) makes the tables.
func pgKit(pg *testenv.Postgres) *kit {
	ctx := context.Background()
	one := func(t testing.TB, h *History, q string, args ...any) int {
		t.Helper()
		var n int
		if err := h.be.(*pgBackend).pool.QueryRow(ctx, q, args...).Scan(&n); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		return n
	}
	return &kit{
		name:  "postgres",
		place: func(t testing.TB) string { return pg.NewDatabase(t) },
		openAt: func(url string, o Options) (*History, func(), error) {
			st, err := pgstore.Open(ctx, url)
			if err != nil {
				return nil, nil, err
			}
			h, err := OpenPostgres(st.Pool(), st.Path(), o)
			if err != nil {
				st.Close()
				return nil, nil, err
			}
			return h, func() { h.Close(); st.Close() }, nil
		},
		count: func(t testing.TB, h *History, id string) (raw, buckets int) {
			return one(t, h, `SELECT count(*) FROM history_raw WHERE device = $1`, id),
				one(t, h, `SELECT count(*) FROM history_buckets WHERE device = $1`, id)
		},
		has: func(t testing.TB, h *History, id string) bool {
			return one(t, h, `SELECT count(*) FROM history_devices WHERE device = $1`, id) > 0
		},
		putRaw: func(t testing.TB, h *History, id string, ms int64, v []byte) {
			t.Helper()
			if _, err := h.be.(*pgBackend).pool.Exec(ctx, `INSERT INTO history_raw (device, ms, v) VALUES ($1, $2, $3)
				ON CONFLICT (device, ms) DO UPDATE SET v = EXCLUDED.v`, id, ms, v); err != nil {
				t.Fatal(err)
			}
		},
	}
}

// testSameMillisecond: samples of a device in one millisecond, in one
// batch or in two, are all kept, each at the next free millisecond.
func testSameMillisecond(t *testing.T, k *kit) {
	clk := &clock{t: base.Add(time.Hour)}
	h := k.open(t, k.place(t), clk, Options{})
	recordAll(t, h, "d1", base, []in{{0, 20, 20, false, false, ""}, {0, 21, 20, false, false, ""}})
	recordAll(t, h, "d1", base, []in{{0, 22, 20, false, false, ""}})
	if raw, _ := k.count(t, h, "d1"); raw != 3 {
		t.Fatalf("%d raw samples, want 3", raw)
	}
	got := points(t, h, "d1", base, base.Add(time.Hour), time.Minute)
	samePoints(t, "points", got, []out{{t: 0, n: 3, tn: 3, min: 20, mean: 21, max: 22, spn: 3, sp: 20, spMean: 20}}, 0.005)
}

// testTwoInstances: two controllers on one database: what one writes the
// other answers, and compacting at once on both folds each sample once.
func testTwoInstances(t *testing.T, k *kit) {
	db := k.place(t)
	clk := &clock{t: base}
	a := k.open(t, db, clk, Options{})
	b := k.open(t, db, clk, Options{})
	ins := series(base, 3, 11)
	ids := []string{"d1", "d2", "d3", "d4", "d5", "d6"}
	for _, id := range ids {
		recordAll(t, a, id, base, ins)
	}
	end := base.Add(3 * 24 * time.Hour)
	clk.Set(end)
	want := points(t, a, "d3", base, base.Add(24*time.Hour), time.Hour)
	if len(want) == 0 {
		t.Fatal("no points")
	}
	samePoints(t, "b before compaction", points(t, b, "d3", base, base.Add(24*time.Hour), time.Hour), want, 0)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i, h := range []*History{a, b} {
		wg.Add(1)
		go func() { defer wg.Done(); errs[i] = h.Compact() }()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		raw, buckets := k.count(t, a, id)
		if buckets == 0 || raw > 48*120+2 {
			t.Fatalf("%s: %d raw, %d buckets", id, raw, buckets)
		}
	}
	samePoints(t, "a after compaction", points(t, a, "d3", base, base.Add(24*time.Hour), time.Hour), want, 4*0.5)
	samePoints(t, "b after compaction", points(t, b, "d3", base, base.Add(24*time.Hour), time.Hour), want, 4*0.5)
}

// testPostgresYear fills a year of one device in PostgreSQL as
// TestYearIsBounded does in bbolt, and prints what it occupies
// (pg_total_relation_size of the three tables: rows, indexes, free
// space) and what a year's query takes, for docs/history.md.
func testPostgresYear(t *testing.T, k *kit) {
	if testing.Short() {
		t.Skip("fills a year of telemetry")
	}
	clk := &clock{t: base.Add(-yearDays * 24 * time.Hour)}
	h := k.open(t, k.place(t), clk, Options{FlushEvery: time.Hour})
	start := time.Now()
	y := fillYearOf(t, h, clk)
	fill := time.Since(start)
	pool := h.be.(*pgBackend).pool
	ctx := context.Background()
	size := func() (total, raw, buckets int64) {
		t.Helper()
		if err := pool.QueryRow(ctx, `SELECT pg_total_relation_size('history_raw') + pg_total_relation_size('history_buckets') + pg_total_relation_size('history_devices'),
			pg_total_relation_size('history_raw'), pg_total_relation_size('history_buckets')`).Scan(&total, &raw, &buckets); err != nil {
			t.Fatal(err)
		}
		return
	}
	total, rawB, bucketsB := size()
	// The year went by in seconds, too fast for autovacuum: the raw
	// table (a 48-hour queue, every row deleted two days after it came)
	// holds the year's dead rows. VACUUM FULL gives what the live rows
	// take; in real time autovacuum reuses the dead rows' space.
	if _, err := pool.Exec(ctx, `VACUUM FULL history_raw, history_buckets, history_devices`); err != nil {
		t.Fatal(err)
	}
	vtotal, vraw, vbuckets := size()
	nraw, nbuckets := k.count(t, h, "living-room")
	t.Logf("PostgreSQL, a year of one device (%d samples) filled in %v: %d B before VACUUM FULL (the raw table's dead rows: %d B); after: %d B (%.2f MB) in all: history_raw %d B for %d samples (%.0f B each), history_buckets %d B for %d buckets (%.0f B each, %d B before)",
		y.sample, fill.Round(time.Millisecond), total, rawB, vtotal, float64(vtotal)/1e6, vraw, nraw, float64(vraw)/float64(nraw), vbuckets, nbuckets, float64(vbuckets)/float64(nbuckets), bucketsB)
	if nbuckets < (yearDays-2)*96-1 || nbuckets > yearDays*96 || nraw < 48*120 || nraw > 48*120+1 {
		t.Errorf("%d buckets and %d raw samples, want about %d and %d", nbuckets, nraw, (yearDays-2)*96, 48*120)
	}
	for _, q := range []struct {
		name string
		days int
		step time.Duration
	}{{"365 d at 1 d", 365, 24 * time.Hour}, {"30 d at 15 min", 30, 15 * time.Minute}, {"48 h at 1 min", 2, time.Minute}} {
		const n = 20
		var res Result
		start := time.Now()
		for range n {
			var err error
			if res, err = h.Query("living-room", base.Add(-time.Duration(q.days)*24*time.Hour), base, q.step); err != nil {
				t.Fatal(err)
			}
		}
		t.Logf("PostgreSQL query %s: %d points in %v", q.name, len(res.Points), (time.Since(start) / n).Round(10*time.Microsecond))
		if len(res.Points) < q.days*int(24*time.Hour/q.step)*9/10 {
			t.Errorf("%s: %d points", q.name, len(res.Points))
		}
	}
}

// testDatabaseDown: while PostgreSQL is down a flush fails, its samples
// are counted lost and logged, and nothing waits; once it is back the
// history writes again.
func testDatabaseDown(t *testing.T, k *kit, pg *testenv.Postgres) {
	clk := &clock{t: base.Add(time.Hour)}
	l := &logs{}
	h := k.open(t, k.place(t), clk, Options{Logger: slog.New(l), FlushEvery: time.Hour})
	recordAll(t, h, "d1", base, []in{{0, 20, 20, false, false, ""}})
	pg.Stop()
	restarted := false
	defer func() {
		if !restarted {
			pg.Start()
		}
	}()
	for i := range 3 {
		in{time.Minute + time.Duration(i)*time.Second, 21, 20, false, false, ""}.record(h, "d1", base)
	}
	start := time.Now()
	if err := h.Flush(); err == nil {
		t.Fatal("a flush with the database down succeeded")
	}
	if st := h.Stats(); st.Dropped != 3 || st.Pending != 0 || st.Written != 1 {
		t.Fatalf("stats %+v, want 3 dropped, 1 written", st)
	}
	if !l.has("history: write failed: samples lost samples=3") {
		t.Fatalf("the failed write not logged: %v", l.all())
	}
	t.Logf("a flush with the database down failed after %v", time.Since(start).Round(time.Millisecond))
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	restarted = true
	// The pool's connections died with the server: a write may fail
	// once more before a fresh one is made.
	n := 0
	testenv.Eventually(t, testenv.WaitTimeout, "a write once the database is back", func() (bool, string) {
		in{2*time.Minute + time.Duration(n)*time.Second, 22, 20, false, false, ""}.record(h, "d1", base)
		n++
		err := h.Flush()
		return err == nil, fmt.Sprint(err)
	})
	got := points(t, h, "d1", base, base.Add(time.Hour), time.Hour)
	if len(got) != 1 || got[0].n != 2 || got[0].max != 22 {
		t.Fatalf("points %v, want the first sample and the one written after the restart", got)
	}
}
