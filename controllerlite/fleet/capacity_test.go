package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/thermofleet/thermo/controllerlite/history"
	"github.com/thermofleet/thermo/controllerlite/store/pgstore"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// The load one controller instance takes in docs/cluster.md's capacity
// plan, per device: telemetry every 30 s, and Events at the soak's rate
// (2,268 device writes by 20 devices in 30 days: 3.78 a device a day).
const (
	planTelemetryEvery = 30 * time.Second
	planEventsPerDay   = 2268.0 / 20 / 30
)

// BenchmarkInstanceLoad checks the capacity plan by running the real
// controller code at the load the plan gives one instance: a fleet on a
// PostgreSQL store with the PostgreSQL history, fed N devices' telemetry
// and Events straight into Receive at their planned rates (no broker: a
// broker cluster is sized apart, from its maker's figures) for
// INSTANCE_LOAD_SECONDS (default 60 s). It prints the rate offered and
// the rate handled, the CPU of the controller process and of PostgreSQL,
// and the database's writes: whether one instance keeps up with N
// devices on this machine. Run one size at a time on a shared machine:
//
//	go test -run X -bench InstanceLoad/devices=20000 -benchtime 1x ./controllerlite/fleet/
func BenchmarkInstanceLoad(b *testing.B) {
	for _, n := range []int{5000, 20000, 50000, 100000, 200000, 250000} {
		b.Run(fmt.Sprintf("devices=%d", n), func(b *testing.B) { instanceLoad(b, n) })
	}
}

func instanceLoad(b *testing.B, devices int) {
	dur := 60 * time.Second
	if s, err := strconv.Atoi(os.Getenv("INSTANCE_LOAD_SECONDS")); err == nil && s > 0 {
		dur = time.Duration(s) * time.Second
	}
	pg := testenv.StartPostgres(b)
	ctx := context.Background()
	st, err := pgstore.Open(ctx, pg.NewDatabase(b))
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := history.OpenPostgres(st.Pool(), st.Path(), history.Options{Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	f, err := New(Options{Store: st, Telemetry: h, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- f.Run(runCtx) }()
	f.LinkUp(&failingPub{}, true)
	<-f.Ready()

	ids := make([]string, devices)
	online := protocol.Status{Online: true}.Encode()
	for i := range ids {
		ids[i] = fmt.Sprintf("dev-%06d", i)
		f.Receive(topic(ids[i], protocol.KindStatus), online, false)
		f.Receive(topic(ids[i], protocol.KindEvent), eventPayload(b, 1, 20), false)
	}
	testenv.Eventually(b, 5*time.Minute, "every device known", func() (bool, string) {
		n := f.Status().Received
		return n >= uint64(2*devices), fmt.Sprint(n)
	})
	// Stored: the warm-up's writes are not the load's. (Its greetings
	// may still be owed: see docs/cluster.md on main's a84eacb.)
	testenv.Eventually(b, 5*time.Minute, "every device stored", func() (bool, string) {
		var n int
		if err := st.Pool().QueryRow(ctx, `SELECT count(*) FROM devices WHERE vc_d >= 1`).Scan(&n); err != nil {
			return false, err.Error()
		}
		return n == devices, fmt.Sprint(n)
	})
	telemetry := func(i int, at time.Time) []byte {
		temp := 19 + float64(i%300)/100
		p, err := protocol.Telemetry{V: 1, TS: at, TempC: &temp, Heat: i%3 == 0, SensorOK: true}.Encode()
		if err != nil {
			b.Fatal(err)
		}
		return p
	}

	// Offer the plan's rates in ticks of 100 ms.
	const tick = 100 * time.Millisecond
	telPerTick := float64(devices) * float64(tick) / float64(planTelemetryEvery)
	evPerTick := float64(devices) * planEventsPerDay * tick.Seconds() / 86400
	before := f.Status().Received
	w0 := h.Stats().Written
	db0 := dbWrites(b, st.Pool())
	cpu0, pgcpu0 := selfCPU(), postgresCPU(pg.DataDir)
	start := time.Now()
	var sent, events int
	var telAcc, evAcc float64
	vc := map[int]uint64{}
	b.ResetTimer()
	for t := time.NewTicker(tick); time.Since(start) < dur; <-t.C {
		now := time.Now().UTC()
		for telAcc += telPerTick; telAcc >= 1; telAcc-- {
			i := sent % devices
			f.Receive(topic(ids[i], protocol.KindTelemetry), telemetry(i, now), false)
			sent++
		}
		for evAcc += evPerTick; evAcc >= 1; evAcc-- {
			i := (events * 7919) % devices
			vc[i]++
			f.Receive(topic(ids[i], protocol.KindEvent), eventPayload(b, vc[i]+1, 18+float64(events%40)/10), false)
			events++
		}
	}
	offered := time.Since(start)
	// What is handled within a second after the offer ends counts: the
	// loop may be a batch behind.
	want := before + uint64(sent+events)
	testenv.Eventually(b, time.Minute, "the fleet to handle what was offered", func() (bool, string) {
		return f.Status().Received >= want, fmt.Sprint(f.Status().Received, " of ", want)
	})
	handledIn := time.Since(start)
	if err := h.Flush(); err != nil {
		b.Fatal(err)
	}
	b.StopTimer()
	cpu, pgcpu := selfCPU()-cpu0, postgresCPU(pg.DataDir)-pgcpu0
	db := dbWrites(b, st.Pool()).minus(db0)
	secs := handledIn.Seconds()
	b.ReportMetric(float64(sent+events)/offered.Seconds(), "msgs/s-offered")
	b.ReportMetric(float64(sent+events)/secs, "msgs/s-handled")
	b.ReportMetric(cpu.Seconds()/secs*100, "%cpu-controller")
	b.ReportMetric(pgcpu.Seconds()/secs*100, "%cpu-postgres")
	b.ReportMetric(float64(db.commits)/secs, "db-commits/s")
	b.ReportMetric(float64(db.historyRows)/secs, "history-rows/s")
	b.ReportMetric(float64(db.deviceRows)/secs, "device-rows/s")
	b.ReportMetric(float64(db.walBytes)/secs/1e6, "wal-MB/s")
	b.Logf("%d devices for %v: offered %d telemetry + %d events (%.0f msg/s), all handled after %v; controller CPU %v (%.0f%% of one core), PostgreSQL CPU %v (%.0f%%); database: %d commits, %d history rows, %d device rows written (%.0f, %.0f, %.0f a second), WAL %.1f MB (%.2f MB/s); history written %d, dropped %d; GOMAXPROCS %d",
		devices, offered.Round(time.Millisecond), sent, events, float64(sent+events)/offered.Seconds(), handledIn.Round(time.Millisecond),
		cpu.Round(time.Millisecond), cpu.Seconds()/secs*100, pgcpu.Round(time.Millisecond), pgcpu.Seconds()/secs*100,
		db.commits, db.historyRows, db.deviceRows, float64(db.commits)/secs, float64(db.historyRows)/secs, float64(db.deviceRows)/secs,
		float64(db.walBytes)/1e6, float64(db.walBytes)/secs/1e6,
		h.Stats().Written-w0, h.Stats().Dropped, runtime.GOMAXPROCS(0))
	if h.Stats().Dropped != 0 {
		b.Errorf("the history dropped %d samples", h.Stats().Dropped)
	}
	cancel()
	<-done
	h.Close()
}

// writes are the database's counters of what was written.
type writes struct{ commits, historyRows, deviceRows, walBytes int64 }

func (w writes) minus(o writes) writes {
	return writes{w.commits - o.commits, w.historyRows - o.historyRows, w.deviceRows - o.deviceRows, w.walBytes - o.walBytes}
}

// dbWrites reads the database's cumulative statistics. A backend reports
// its counts when idle, seconds later: it waits until the history's
// inserts counted reach the rows there are, and the devices' inserts the
// devices there are.
func dbWrites(tb testing.TB, pool *pgxpool.Pool) writes {
	tb.Helper()
	ctx := context.Background()
	testenv.Eventually(tb, time.Minute, "the statistics to catch up", func() (bool, string) {
		var ok bool
		if err := pool.QueryRow(ctx, `SELECT coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'history_raw'), 0) >= (SELECT count(*) FROM history_raw)
			AND coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'devices'), 0) >= (SELECT count(*) FROM devices)`).Scan(&ok); err != nil {
			return false, err.Error()
		}
		return ok, ""
	})
	var w writes
	err := pool.QueryRow(ctx, `SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()),
		coalesce((SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'history_raw'), 0),
		coalesce((SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'devices'), 0),
		pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint`).Scan(&w.commits, &w.historyRows, &w.deviceRows, &w.walBytes)
	if err != nil {
		tb.Fatal(err)
	}
	return w
}

// selfCPU is this process's user and system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// postgresCPU is the CPU time of the cluster's server and its children
// (its backends: the pool's connections live through the run).
func postgresCPU(dataDir string) time.Duration {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	pm := strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0])
	procs, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, p := range procs {
		s, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ... utime(14) stime(15)
		rest := string(s)
		pid := rest[:strings.IndexByte(rest, ' ')]
		if i := strings.LastIndexByte(rest, ')'); i >= 0 {
			rest = rest[i+2:]
		}
		fields := strings.Fields(rest)
		if len(fields) < 13 || (pid != pm && fields[1] != pm) {
			continue
		}
		ut, _ := strconv.ParseInt(fields[11], 10, 64)
		stt, _ := strconv.ParseInt(fields[12], 10, 64)
		ticks += ut + stt
	}
	return time.Duration(ticks) * time.Second / 100 // USER_HZ
}
