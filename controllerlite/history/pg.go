package history

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// pgTimeout bounds one statement batch of the PostgreSQL history: a
// database that does not answer fails the write (its samples are counted
// lost) or the query rather than holding the writer.
const pgTimeout = 30 * time.Second

// DefaultPostgresBuffer bounds the samples waiting to be written to
// PostgreSQL: an instance sharing a database serves far more devices
// than a single controller (docs/cluster.md plans 200,000 an instance:
// 6,700 samples a second, 67,000 a flush interval), about 3.2 MB.
const DefaultPostgresBuffer = 100000

// pgBackend keeps the history in the controller's PostgreSQL database, in
// the tables of pgstore's migration 0003_history.sql: history_raw and
// history_buckets keyed by (device, time), values in this package's
// encodings, and history_devices with how far each device is compacted.
//
// With several controller instances, every instance answers every
// device's history from the database, and only a device's owner writes
// its samples: an instance subscribes to the telemetry of the devices it
// owns only (fleet/shard.go), and its fleet drops any message of a device
// it does not own (Fleet.accept) before telling the sink, so it writes no
// other's, even while subscriptions move. Compaction may run
// on every instance: devices are compacted in transactions holding their
// history_devices rows (FOR UPDATE SKIP LOCKED), and a device already
// compacted to the cut is not due, so the instances share the work
// rather than repeat it.
type pgBackend struct {
	pool *pgxpool.Pool
}

// OpenPostgres opens the history kept in PostgreSQL, in the database of
// pool (a pgstore.Store's Pool, whose migrations made the tables), and
// starts its writer and compaction as Open does for a file, the first
// compaction in the background. Close stops them; the pool stays open,
// its owner's to close.
func OpenPostgres(pool *pgxpool.Pool, where string, o Options) (*History, error) {
	if pool == nil {
		return nil, errors.New("open history: no database")
	}
	if o.Buffer <= 0 {
		o.Buffer = DefaultPostgresBuffer
	}
	o = o.defaults()
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	var ok bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('history_raw') IS NOT NULL`).Scan(&ok); err != nil {
		return nil, fmt.Errorf("open history: %w", err)
	}
	if !ok {
		return nil, errors.New("open history: the database has no history tables (pgstore's migrations make them)")
	}
	return start(&pgBackend{pool: pool}, where, o, true), nil
}

func (p *pgBackend) close() error { return nil }

func (p *pgBackend) write(batch []sample) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	ids := make([]string, 0, 8)
	seen := map[string]bool{}
	for _, s := range batch {
		if !seen[s.id] {
			seen[s.id] = true
			ids = append(ids, s.id)
		}
	}
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO history_devices (device) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING`, ids); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT device, compacted FROM history_devices WHERE device = ANY($1)`, ids)
		if err != nil {
			return err
		}
		compacted := map[string]int64{}
		var (
			id  string
			sec int64
		)
		if _, err := pgx.ForEachRow(rows, []any{&id, &sec}, func() error { compacted[id] = sec * 1000; return nil }); err != nil {
			return err
		}
		var (
			devs []string
			mss  []int64
			vals [][]byte
		)
		for _, s := range batch {
			if s.ms >= compacted[s.id] {
				devs, mss, vals = append(devs, s.id), append(mss, s.ms), append(vals, encodeRaw(nil, s))
			}
		}
		// Two samples of a device in one millisecond (in the batch or
		// stored): the one not inserted takes the next millisecond.
		for try := 0; len(devs) > 0 && try < 1000; try++ {
			rows, err := tx.Query(ctx, `INSERT INTO history_raw (device, ms, v)
				SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[])
				ON CONFLICT DO NOTHING RETURNING device, ms`, devs, mss, vals)
			if err != nil {
				return err
			}
			type key struct {
				id string
				ms int64
			}
			in := map[key]int{}
			var ms int64
			if _, err := pgx.ForEachRow(rows, []any{&id, &ms}, func() error { in[key{id, ms}]++; return nil }); err != nil {
				return err
			}
			n := 0
			for i := range devs {
				k := key{devs[i], mss[i]}
				if in[k] > 0 {
					in[k]--
					continue
				}
				devs[n], mss[n], vals[n] = devs[i], mss[i]+1, vals[i]
				n++
			}
			devs, mss, vals = devs[:n], mss[:n], vals[:n]
		}
		return nil
	})
}

func (p *pgBackend) remove(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	return pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		for _, q := range []string{
			`DELETE FROM history_raw WHERE device = $1`,
			`DELETE FROM history_buckets WHERE device = $1`,
			`DELETE FROM history_devices WHERE device = $1`,
		} {
			if _, err := tx.Exec(ctx, q, id); err != nil {
				return err
			}
		}
		return nil
	})
}

// compactNext takes the next n devices due (compacted before cutoff)
// that no other instance is compacting, in one transaction: for each it
// reads its raw samples of the last compaction interval and the raw
// window's first one, so a step is bounded by n devices' rows.
func (p *pgBackend) compactNext(after string, n int, cutoff, expire int64, fold foldFunc) (last string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, p.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `SELECT device, compacted FROM history_devices
			WHERE device > $1 AND compacted < $2 ORDER BY device LIMIT $3 FOR UPDATE SKIP LOCKED`, after, cutoff, n)
		if err != nil {
			return err
		}
		type due struct {
			id   string
			done int64
		}
		var dues []due
		var d due
		if _, err := pgx.ForEachRow(rows, []any{&d.id, &d.done}, func() error { dues = append(dues, d); return nil }); err != nil {
			return err
		}
		for _, d := range dues {
			last = d.id
			if err := p.compactDevice(ctx, tx, d.id, d.done, cutoff, expire, fold); err != nil {
				return err
			}
		}
		return nil
	})
	return last, err
}

// compactDevice compacts one device, whose row tx holds, compacted up to
// done.
func (p *pgBackend) compactDevice(ctx context.Context, tx pgx.Tx, id string, done, cutoff, expire int64, fold foldFunc) error {
	cutMs := cutoff * 1000
	rows, err := tx.Query(ctx, `SELECT ms, v FROM history_raw WHERE device = $1 AND ms < $2 ORDER BY ms`, id, cutMs)
	if err != nil {
		return err
	}
	ss, err := scanRaw(rows)
	if err != nil {
		return err
	}
	next := int64(-1)
	if err := tx.QueryRow(ctx, `SELECT ms FROM history_raw WHERE device = $1 AND ms >= $2 ORDER BY ms LIMIT 1`, id, cutMs).Scan(&next); err != nil && !errors.Is(err, pgx.ErrNoRows) {
		return err
	}
	accs, keep := fold(done, ss, next)
	starts := slices.Sorted(maps.Keys(accs))
	secs, vals := make([]int64, len(starts)), make([][]byte, len(starts))
	for i, start := range starts {
		secs[i], vals[i] = start/1000, encodeBucket(nil, *accs[start])
	}
	keepMs := int64(-1)
	if keep >= 0 {
		keepMs = ss[keep].ms
	}
	for _, st := range []struct {
		q    string
		args []any
	}{
		{`INSERT INTO history_buckets (device, t, v) SELECT $1, * FROM unnest($2::bigint[], $3::bytea[])
			ON CONFLICT (device, t) DO UPDATE SET v = EXCLUDED.v`, []any{id, secs, vals}},
		{`DELETE FROM history_raw WHERE device = $1 AND ms < $2 AND ms <> $3`, []any{id, cutMs, keepMs}},
		{`UPDATE history_devices SET compacted = $2 WHERE device = $1`, []any{id, cutoff}},
		// Retention: buckets, and a stale raw sample, before expire.
		{`DELETE FROM history_buckets WHERE device = $1 AND t < $2`, []any{id, expire}},
		{`DELETE FROM history_raw WHERE device = $1 AND ms < $2`, []any{id, expire * 1000}},
		{`DELETE FROM history_devices WHERE device = $1
			AND NOT EXISTS (SELECT 1 FROM history_raw WHERE device = $1)
			AND NOT EXISTS (SELECT 1 FROM history_buckets WHERE device = $1)`, []any{id}},
	} {
		if _, err := tx.Exec(ctx, st.q, st.args...); err != nil {
			return err
		}
	}
	return nil
}

// scanRaw reads rows of (ms, v) as samples.
func scanRaw(rows pgx.Rows) ([]sample, error) {
	var (
		ss []sample
		ms int64
		v  []byte
	)
	_, err := pgx.ForEachRow(rows, []any{&ms, &v}, func() error {
		s, err := decodeRaw(ms, v)
		if err != nil {
			return fmt.Errorf("raw sample at %d: %w", ms, err)
		}
		ss = append(ss, s)
		return nil
	})
	return ss, err
}

func (p *pgBackend) read(id string, startMs, toMs int64) (st stored, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), pgTimeout)
	defer cancel()
	// One snapshot: a compaction committing in between must not move
	// samples from raw to buckets under the query.
	err = pgx.BeginTxFunc(ctx, p.pool, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly}, func(tx pgx.Tx) error {
		var done int64
		err := tx.QueryRow(ctx, `SELECT compacted FROM history_devices WHERE device = $1`, id).Scan(&done)
		if errors.Is(err, pgx.ErrNoRows) {
			return nil
		}
		if err != nil {
			return err
		}
		st.doneMs = done * 1000
		if startMs < st.doneMs {
			rows, err := tx.Query(ctx, `SELECT t, v FROM history_buckets WHERE device = $1 AND t >= $2 AND t < $3 ORDER BY t`,
				id, startMs/1000, min(st.doneMs, toMs)/1000)
			if err != nil {
				return err
			}
			var (
				sec int64
				v   []byte
			)
			if _, err := pgx.ForEachRow(rows, []any{&sec, &v}, func() error {
				a, err := decodeBucket(v)
				if err != nil {
					return fmt.Errorf("bucket at %d: %w", sec, err)
				}
				st.buckets = append(st.buckets, timedAcc{ms: sec * 1000, a: a})
				return nil
			}); err != nil {
				return err
			}
		}
		lo := max(startMs, st.doneMs)
		if lo >= toMs {
			return nil
		}
		rows, err := tx.Query(ctx, `(SELECT ms, v FROM history_raw WHERE device = $1 AND ms < $2 ORDER BY ms DESC LIMIT 1)
			UNION ALL (SELECT ms, v FROM history_raw WHERE device = $1 AND ms >= $2 AND ms < $3 ORDER BY ms)
			ORDER BY ms`, id, lo, toMs)
		if err != nil {
			return err
		}
		if st.raw, err = scanRaw(rows); err != nil {
			return err
		}
		// The first at or after toMs: only its time counts.
		var next int64
		switch err := tx.QueryRow(ctx, `SELECT ms FROM history_raw WHERE device = $1 AND ms >= $2 ORDER BY ms LIMIT 1`, id, toMs).Scan(&next); {
		case err == nil:
			st.raw = append(st.raw, sample{ms: next})
		case !errors.Is(err, pgx.ErrNoRows):
			return err
		}
		return nil
	})
	return st, err
}
