package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/controllerlite/store/storetest"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

var ctx = context.Background()

// TestPostgres runs every test on one throwaway cluster (initdb takes a
// while), each test on a database of its own.
func TestPostgres(t *testing.T) {
	pg := testenv.StartPostgres(t)
	t.Run("Contract", func(t *testing.T) {
		storetest.Run(t, func(t *testing.T) storetest.Opener {
			url := pg.NewDatabase(t)
			return func() (storetest.Store, error) { return Open(ctx, url) }
		})
	})
	t.Run("Migrations", func(t *testing.T) { testMigrations(t, pg) })
	t.Run("ClockBehind", func(t *testing.T) { testClockBehind(t, pg) })
	t.Run("RowLocks", func(t *testing.T) { testRowLocks(t, pg) })
	t.Run("LoadRefusesCorruptRows", func(t *testing.T) { testLoadRefusesCorruptRows(t, pg) })
	t.Run("SurvivesServerCrash", func(t *testing.T) { testSurvivesServerCrash(t, pg) })
	t.Run("ServerDown", func(t *testing.T) { testServerDown(t, pg) })
	t.Run("PutBased", func(t *testing.T) { testPutBased(t, pg) })
	t.Run("Leases", func(t *testing.T) { testLeases(t, pg) })
	t.Run("LoadChanged", func(t *testing.T) { testLoadChanged(t, pg) })
}

// testLoadChanged: the records written since a cursor, not those written
// long before it; one written in a transaction that began before the read
// and committed after is read by the next call; the zero time reads all.
func testLoadChanged(t *testing.T, pg *testenv.Postgres) {
	s := open(t, pg.NewDatabase(t))
	ids := func(devs []store.Device) []string {
		var out []string
		for _, d := range devs {
			out = append(out, d.ID)
		}
		return out
	}
	if err := s.Put(dev("old", protocol.Clock{1, 1}), dev("late", protocol.Clock{1, 1})); err != nil {
		t.Fatal(err)
	}
	exec(t, s, `UPDATE devices SET updated_at = now() - interval '1 hour' WHERE id IN ('old', 'late')`)

	// A write whose transaction begins now and commits after the read.
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `UPDATE devices SET owed = true, updated_at = now() WHERE id = 'late'`); err != nil {
		t.Fatal(err)
	}
	all, cursor, err := s.LoadChanged(time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(all); !slices.Equal(got, []string{"late", "old"}) {
		t.Fatalf("the zero time read %v, want every record", got)
	}
	if err := s.Put(dev("new", protocol.Clock{1, 1})); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	changed, next, err := s.LoadChanged(cursor)
	if err != nil {
		t.Fatal(err)
	}
	if got := ids(changed); !slices.Equal(got, []string{"late", "new"}) {
		t.Errorf("changed since the cursor: %v, want late (committed after the read) and new, not old", got)
	}
	for _, d := range changed {
		if d.ID == "late" && !d.Owed {
			t.Errorf("late read as it was before its transaction committed: %+v", d)
		}
	}
	if !next.After(cursor) {
		t.Errorf("cursor %v did not move on from %v", next, cursor)
	}
}

func open(t *testing.T, url string) *Store {
	t.Helper()
	s, err := Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dev(id string, vc protocol.Clock) store.Device {
	return store.Device{ID: id, Replica: storetest.Replica(vc, protocol.Props{protocol.PropSetpoint: {Val: 20.5, W: vc}})}
}

func exec(t *testing.T, s *Store, sql string, args ...any) {
	t.Helper()
	if _, err := s.pool.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// testMigrations: a fresh database gets every migration, recorded once
// each; opening again applies nothing; instances opening a fresh database
// at the same time apply them once; a database from a newer build is
// refused; the URL's password never reaches Path.
func testMigrations(t *testing.T, pg *testenv.Postgres) {
	url := pg.NewDatabase(t)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := Open(ctx, url)
			if err == nil {
				s.Close()
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent opens: %v", err)
	}
	s := open(t, url)
	versions := func() []string {
		rows, err := s.pool.Query(ctx, `SELECT version, name FROM schema_migrations ORDER BY version`)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for rows.Next() {
			var v int
			var name string
			if err := rows.Scan(&v, &name); err != nil {
				t.Fatal(err)
			}
			out = append(out, fmt.Sprintf("%d %s", v, name))
		}
		return out
	}
	got := versions()
	if len(got) != SchemaVersion() || SchemaVersion() < 1 || got[0] != "1 0001_devices.sql" {
		t.Fatalf("schema_migrations %q, want versions 1..%d", got, SchemaVersion())
	}

	exec(t, s, `INSERT INTO schema_migrations (version, name) VALUES ($1, 'from the future')`, SchemaVersion()+1)
	if _, err := Open(ctx, url); err == nil || !strings.Contains(err.Error(), "newer controllerlite") {
		t.Fatalf("Open of a newer schema: %v", err)
	}

	// Trust authentication ignores the password; Path must not show it.
	withPassword := strings.Replace(pg.NewDatabase(t), "thermo@", "thermo:s3cret@", 1)
	if p := open(t, withPassword).Path(); strings.Contains(p, "s3cret") || !strings.HasPrefix(p, "postgres://thermo@127.0.0.1:") {
		t.Errorf("Path %q", p)
	}
	for _, bad := range []string{"", "mysql://x", "postgres://%zz"} {
		if _, err := Open(ctx, bad); err == nil {
			t.Errorf("Open(%q) worked", bad)
		}
	}
}

// testClockBehind: a Put whose clock is behind the stored one (another
// writer got there first) is refused, and its whole batch with it; equal
// and later clocks are taken.
func testClockBehind(t *testing.T, pg *testenv.Postgres) {
	url := pg.NewDatabase(t)
	a, b := open(t, url), open(t, url)
	if err := a.Put(dev("d1", protocol.Clock{5, 2}), dev("d2", protocol.Clock{1, 1})); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		devs []store.Device
		ok   bool
	}{
		{"behind", []store.Device{dev("d1", protocol.Clock{4, 2})}, false},
		{"concurrent", []store.Device{dev("d1", protocol.Clock{6, 1})}, false},
		{"one behind in a batch", []store.Device{dev("d2", protocol.Clock{9, 9}), dev("d1", protocol.Clock{5, 1})}, false},
		{"equal", []store.Device{dev("d1", protocol.Clock{5, 2})}, true},
		{"later", []store.Device{dev("d1", protocol.Clock{5, 3})}, true},
	} {
		err := b.Put(tc.devs...)
		if tc.ok != (err == nil) || !tc.ok && !errors.Is(err, ErrClockBehind) {
			t.Fatalf("%s: Put: %v", tc.name, err)
		}
	}
	got, err := a.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Replica.VC != (protocol.Clock{5, 3}) || got[1].Replica.VC != (protocol.Clock{1, 1}) {
		t.Fatalf("after the refusals: d1 %v d2 %v, want [5 3] and [1 1]", got[0].Replica.VC, got[1].Replica.VC)
	}
}

// testRowLocks: Put holds its devices' rows until it commits: a writer
// holding d1's row (another instance in the middle of a receive) makes a
// Put of d1 wait, not interleave; it goes through once the row is free,
// and a Put of another device does not wait.
func testRowLocks(t *testing.T, pg *testenv.Postgres) {
	url := pg.NewDatabase(t)
	s := open(t, url)
	if err := s.Put(dev("d1", protocol.Clock{1, 0}), dev("d2", protocol.Clock{1, 0})); err != nil {
		t.Fatal(err)
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1 FROM devices WHERE id = 'd1' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Put(dev("d1", protocol.Clock{2, 0})) }()
	// The waiting Put shows in pg_locks as a lock not granted.
	testenv.WaitFor(t, "the Put of d1 to wait for the row", func() bool {
		var waiting int
		s.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE NOT granted`).Scan(&waiting)
		return waiting > 0
	})
	if err := s.Put(dev("d2", protocol.Clock{2, 0})); err != nil {
		t.Fatalf("Put of another device: %v", err)
	}
	select {
	case err := <-done:
		t.Fatalf("the Put of d1 finished while its row was held: %v", err)
	default:
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	got, err := s.Load()
	if err != nil || got[0].Replica.VC != (protocol.Clock{2, 0}) {
		t.Fatalf("d1 after the wait: %+v, %v", got, err)
	}
}

// testLoadRefusesCorruptRows: a row that does not hold a valid replica
// (edited by hand, written by a bug) is an error naming the device.
func testLoadRefusesCorruptRows(t *testing.T, pg *testenv.Postgres) {
	tests := []struct {
		name, set, want string
	}{
		{"bad value", `vc_c = 1, props = '{"setpoint_c":{"val":99,"w":[1,0]}}'`, "out of range"},
		{"stamp beyond clock", `vc_c = 1, props = '{"mode":{"val":"heat","w":[2,0]}}'`, "beyond the clock"},
		{"counter over 2^52", `vc_c = 4503599627370497, props = '{}'`, "over the limit"},
		{"unknown property", `vc_c = 1, props = '{"fan":{"val":1,"w":[1,0]}}'`, "unknown property"},
		{"props not an object", `props = '[1]'`, "props"},
		{"alerts not a list", `raised = '{"a":1}'`, "alerts"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, pg.NewDatabase(t))
			if err := s.Put(dev("d1", protocol.Clock{0, 0})); err != nil {
				t.Fatal(err)
			}
			exec(t, s, `UPDATE devices SET `+tc.set+` WHERE id = 'd1'`)
			if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `"d1"`) {
				t.Fatalf("Load: %v, want an error naming d1 with %q", err, tc.want)
			}
		})
	}
	// The schema itself refuses an id no device may have.
	s := open(t, pg.NewDatabase(t))
	if _, err := s.pool.Exec(ctx, `INSERT INTO devices (id, vc_c, vc_d) VALUES ('D/1', 0, 0)`); err == nil {
		t.Error("the table took id D/1")
	}
}

// testSurvivesServerCrash: every Put that returned is there after the
// server stops as a crash would (no checkpoint: recovery from the WAL),
// and the store reconnects by itself once the server is back.
func testSurvivesServerCrash(t *testing.T, pg *testenv.Postgres) {
	s := open(t, pg.NewDatabase(t))
	const n = 50
	for i := uint64(1); i <= n; i++ {
		if err := s.Put(dev("d1", protocol.Clock{i, 0}), dev(fmt.Sprintf("e%02d", i), protocol.Clock{i, 0})); err != nil {
			t.Fatal(err)
		}
	}
	pg.Kill()
	if err := pg.Start(); err != nil {
		t.Fatal(err)
	}
	var got []store.Device
	testenv.WaitFor(t, "Load after the restart", func() bool {
		var err error
		got, err = s.Load()
		return err == nil
	})
	if len(got) != n+1 || got[0].Replica.VC != (protocol.Clock{n, 0}) {
		t.Fatalf("after the crash: %d records, d1 at %v; want %d, [%d 0]", len(got), got[0].Replica.VC, n+1, n)
	}
}

// testServerDown: with the server stopped, Put fails (the fleet then keeps
// the record to write again and publishes nothing that depends on it)
// within the store's timeout, and works again once the server is back.
func testServerDown(t *testing.T, pg *testenv.Postgres) {
	s := open(t, pg.NewDatabase(t))
	if err := s.Put(dev("d1", protocol.Clock{1, 0})); err != nil {
		t.Fatal(err)
	}
	pg.Stop()
	err := s.Put(dev("d1", protocol.Clock{2, 0}))
	if startErr := pg.Start(); startErr != nil {
		t.Fatal(startErr)
	}
	if err == nil {
		t.Fatal("Put with the server down worked")
	}
	testenv.WaitFor(t, "Put once the server is back", func() bool { return s.Put(dev("d1", protocol.Clock{2, 0})) == nil })
	var vc int64
	if err := s.pool.QueryRow(ctx, `SELECT vc_c FROM devices WHERE id = 'd1'`).Scan(&vc); err != nil || vc != 2 {
		t.Fatalf("d1's clock %d, %v", vc, err)
	}
}
