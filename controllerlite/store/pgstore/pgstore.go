// Package pgstore keeps the controller's device records in PostgreSQL
// instead of the bbolt file of package store: for a fleet that outgrows one
// machine, where the database is the one engines of that size use and
// where several controller instances will share it.
//
// It holds what store.Device holds: each device's clock, properties and
// their write stamps, the owed Command mark, status, last seen, latest
// telemetry and alerts. Telemetry history stays in the data directory's
// history.db.
//
// The schema is versioned: the migrations embedded below (migrations/NNNN_*.sql)
// are applied at Open, in order, each recorded in schema_migrations, all in
// one transaction under an advisory lock so that instances starting
// together apply them once. A database migrated by a newer controllerlite
// is refused rather than misread.
//
// Every Put is one transaction that first locks the rows of its devices
// (SELECT ... FOR UPDATE, in id order, so two writers never deadlock) and
// checks that the stored clock is not ahead of the one being written:
// a clock that went backwards means another writer got there first, and
// the write is refused (ErrClockBehind) instead of losing theirs. The
// commit returns once PostgreSQL has made it durable.
package pgstore

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

//go:embed migrations/*.sql
var migrationFiles embed.FS

// DefaultTimeout bounds one Load or Put, connecting included: a database
// that does not answer fails the write (the fleet keeps the record dirty
// and publishes nothing that depends on it) instead of stalling the fleet.
const DefaultTimeout = 10 * time.Second

// migrationLock is the advisory lock key held while migrating.
const migrationLock = 0x7468_6572_6d6f // "thermo"

// ErrClockBehind is returned by Put when a stored clock is ahead of the
// one written: another writer has recorded later events for the device.
var ErrClockBehind = errors.New("stored clock is ahead of the one written: another controller wrote this device")

// IsURL reports whether s is a PostgreSQL connection URL, the form
// `serve --store` takes.
func IsURL(s string) bool {
	return strings.HasPrefix(s, "postgres://") || strings.HasPrefix(s, "postgresql://")
}

// Store is an open PostgreSQL store. It is safe for concurrent use.
type Store struct {
	pool    *pgxpool.Pool
	where   string
	timeout time.Duration
}

// Open connects to the database at url (postgres://USER@HOST:PORT/DB?...,
// as libpq takes it), applies the migrations this build knows and has not
// applied yet, and returns the store.
func Open(ctx context.Context, url string) (*Store, error) {
	if !IsURL(url) {
		return nil, errors.New("open store: want a URL postgres://USER@HOST:PORT/DATABASE")
	}
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// pgx's message may quote the URL: keep its password out of logs.
		return nil, errors.New("open store: the PostgreSQL URL does not parse")
	}
	cc := cfg.ConnConfig
	where := (&urlShape{user: cc.User, host: cc.Host, port: cc.Port, db: cc.Database}).String()
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	s := &Store{pool: pool, where: where, timeout: DefaultTimeout}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if err := s.migrate(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("open store %s: %w", where, err)
	}
	return s, nil
}

// urlShape is the URL without its password, for the log.
type urlShape struct {
	user, host string
	port       uint16
	db         string
}

func (u *urlShape) String() string {
	return "postgres://" + u.user + "@" + u.host + ":" + strconv.Itoa(int(u.port)) + "/" + u.db
}

// Path is where the records are: the URL without its password.
func (s *Store) Path() string { return s.where }

// Pool is the store's connection pool, for what else lives in the same
// database (the telemetry history, history.OpenPostgres): its tables come
// with this package's migrations.
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes every connection.
func (s *Store) Close() error {
	s.pool.Close()
	return nil
}

// migration is one embedded schema change.
type migration struct {
	version int
	name    string
	sql     string
}

// migrations returns the embedded migrations in version order; their names
// are NNNN_what.sql, numbered from 1 without gaps.
func migrations() ([]migration, error) {
	files, err := fs.Glob(migrationFiles, "migrations/*.sql")
	if err != nil {
		return nil, err
	}
	var out []migration
	for _, f := range files {
		name := path.Base(f)
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s: want NNNN_what.sql", name)
		}
		b, err := migrationFiles.ReadFile(f)
		if err != nil {
			return nil, err
		}
		out = append(out, migration{version: v, name: name, sql: string(b)})
	}
	slices.SortFunc(out, func(a, b migration) int { return a.version - b.version })
	for i, m := range out {
		if m.version != i+1 {
			return nil, fmt.Errorf("migration %s: version %d, want %d (no gaps, no repeats)", m.name, m.version, i+1)
		}
	}
	return out, nil
}

// SchemaVersion is the newest schema this build knows.
func SchemaVersion() int {
	ms, err := migrations()
	if err != nil {
		panic(err) // the embedded files are part of the build: a test fails first
	}
	return len(ms)
}

// migrate applies the migrations the database lacks, in one transaction.
func (s *Store) migrate(ctx context.Context) error {
	ms, err := migrations()
	if err != nil {
		return err
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrationLock)); err != nil {
		return fmt.Errorf("migrate: lock: %w", err)
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version    integer PRIMARY KEY,
		name       text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	var have int
	if err := tx.QueryRow(ctx, `SELECT coalesce(max(version), 0) FROM schema_migrations`).Scan(&have); err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if have > len(ms) {
		return fmt.Errorf("schema version %d was written by a newer controllerlite (this one knows %d): refusing to misread it", have, len(ms))
	}
	for _, m := range ms[have:] {
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return fmt.Errorf("migration %s: %w", m.name, err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO schema_migrations (version, name) VALUES ($1, $2)`, m.version, m.name); err != nil {
			return fmt.Errorf("migration %s: %w", m.name, err)
		}
	}
	return tx.Commit(ctx)
}

// Put writes records in one transaction: all of them are stored, or none.
func (s *Store) Put(devs ...store.Device) error { return s.put(nil, devs) }

// PutBased is Put for one of several controller instances: base holds, per
// device, the controller counter (the clock's first component) of the
// record as the writer last read or wrote it, and the write is refused
// with ErrClockBehind when the stored counter differs (another instance
// has counted a controller event since: its write would be lost, or two
// different Commands would carry one clock). A device absent from base
// must have no record yet.
func (s *Store) PutBased(base map[string]uint64, devs ...store.Device) error {
	if base == nil {
		base = map[string]uint64{}
	}
	return s.put(base, devs)
}

func (s *Store) put(base map[string]uint64, devs []store.Device) error {
	if len(devs) == 0 {
		return nil
	}
	rows := make([]row, len(devs))
	for i, d := range devs {
		if err := store.Check(d); err != nil {
			return fmt.Errorf("store put: %w", err)
		}
		r, err := toRow(d)
		if err != nil {
			return fmt.Errorf("store put %s: %w", d.ID, err)
		}
		rows[i] = r
	}
	// Lock order: by id, as every writer does, so two never deadlock.
	slices.SortFunc(rows, func(a, b row) int { return strings.Compare(a.id, b.id) })
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		ids := make([]string, len(rows))
		for i, r := range rows {
			ids[i] = r.id
		}
		held, err := tx.Query(ctx, `SELECT id, vc_c, vc_d FROM devices WHERE id = ANY($1) ORDER BY id FOR UPDATE`, ids)
		if err != nil {
			return err
		}
		stored := map[string]protocol.Clock{}
		for held.Next() {
			var id string
			var c, d int64
			if err := held.Scan(&id, &c, &d); err != nil {
				held.Close()
				return err
			}
			stored[id] = protocol.Clock{uint64(c), uint64(d)}
		}
		if err := held.Err(); err != nil {
			return err
		}
		for _, r := range rows {
			vc, ok := stored[r.id]
			if ok && !vc.LessEq(r.vc) {
				return fmt.Errorf("device %s: stored %v, writing %v: %w", r.id, vc, r.vc, ErrClockBehind)
			}
			if base == nil {
				continue
			}
			if b, known := base[r.id]; ok != known || (ok && vc[0] != b) {
				return fmt.Errorf("device %s: stored %v, last read with counter %d (%v): %w", r.id, vc, b, known, ErrClockBehind)
			}
		}
		var b pgx.Batch
		for _, r := range rows {
			b.Queue(upsertRow, r.id, int64(r.vc[0]), int64(r.vc[1]), r.props, r.src, r.owed, r.online, r.lastSeen, r.telemetry, r.reported, r.raised)
		}
		return tx.SendBatch(ctx, &b).Close()
	})
	if err != nil {
		return fmt.Errorf("store put: %w", err)
	}
	return nil
}

// upsertRow writes one record, $1 to $11 as Put passes them.
const upsertRow = `INSERT INTO devices (id, vc_c, vc_d, props, src, owed, online, last_seen, telemetry, reported, raised, updated_at)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, now())
	ON CONFLICT (id) DO UPDATE SET vc_c = EXCLUDED.vc_c, vc_d = EXCLUDED.vc_d, props = EXCLUDED.props,
		src = EXCLUDED.src, owed = EXCLUDED.owed, online = EXCLUDED.online, last_seen = EXCLUDED.last_seen,
		telemetry = EXCLUDED.telemetry, reported = EXCLUDED.reported, raised = EXCLUDED.raised, updated_at = now()`

// Delete removes the records of ids in one transaction; an id without a
// record is no error.
func (s *Store) Delete(ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `DELETE FROM devices WHERE id = ANY($1)`, ids); err != nil {
		return fmt.Errorf("store delete: %w", err)
	}
	return nil
}

// Load returns every stored record, sorted by id. A record that does not
// hold a valid replica is an error naming the device.
func (s *Store) Load() ([]store.Device, error) {
	devs, _, err := s.LoadChanged(time.Time{})
	return devs, err
}

// LoadChanged returns the records written at or after since (every record
// for the zero time), sorted by id, and the cursor to pass next time: the
// database's time of this read less the longest a write's transaction can
// last (the store's timeout), because a record's updated_at is when its
// transaction began, and one that began before this read may commit after
// it. A record is then read again by the next call or two; never missed.
// A deleted record is not reported: read everything (the zero time) now
// and then to see those.
func (s *Store) LoadChanged(since time.Time) ([]store.Device, time.Time, error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	var now time.Time
	if err := s.pool.QueryRow(ctx, `SELECT now()`).Scan(&now); err != nil {
		return nil, time.Time{}, fmt.Errorf("load store: %w", err)
	}
	q := `SELECT id, vc_c, vc_d, props, src, owed, online, last_seen, telemetry, reported, raised FROM devices`
	args := []any{}
	if !since.IsZero() {
		q += ` WHERE updated_at >= $1`
		args = append(args, since)
	}
	rows, err := s.pool.Query(ctx, q+` ORDER BY id`, args...)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("load store: %w", err)
	}
	defer rows.Close()
	var devs []store.Device
	for rows.Next() {
		var r row
		var c, d int64
		if err := rows.Scan(&r.id, &c, &d, &r.props, &r.src, &r.owed, &r.online, &r.lastSeen, &r.telemetry, &r.reported, &r.raised); err != nil {
			return nil, time.Time{}, fmt.Errorf("load store: %w", err)
		}
		r.vc = protocol.Clock{uint64(c), uint64(d)}
		dev, err := r.device()
		if err != nil {
			return nil, time.Time{}, fmt.Errorf("load store: device %q: %w", r.id, err)
		}
		if err := store.Check(dev); err != nil {
			return nil, time.Time{}, fmt.Errorf("load store: %w", err)
		}
		if err := store.Normalize(dev.Replica); err != nil {
			return nil, time.Time{}, fmt.Errorf("load store: device %q: %w", r.id, err)
		}
		devs = append(devs, dev)
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, fmt.Errorf("load store: %w", err)
	}
	return devs, now.Add(-s.timeout - time.Second), nil
}

// row is a device record as its columns hold it.
type row struct {
	id               string
	vc               protocol.Clock
	props            []byte // jsonb
	src              string
	owed, online     bool
	lastSeen         *time.Time
	telemetry        []byte // json, NULL when none
	reported, raised []byte // jsonb, NULL when none
}

func toRow(d store.Device) (row, error) {
	r := d.Replica
	for _, c := range r.VC {
		if c > math.MaxInt64 {
			return row{}, fmt.Errorf("clock %v beyond a bigint", r.VC)
		}
	}
	props := r.Props
	if props == nil {
		props = protocol.Props{}
	}
	pb, err := json.Marshal(props)
	if err != nil {
		return row{}, err
	}
	out := row{id: d.ID, vc: r.VC, props: pb, src: r.Src, owed: d.Owed, online: d.Online}
	if !d.LastSeen.IsZero() {
		t := d.LastSeen
		out.lastSeen = &t
	}
	if len(d.Telemetry) > 0 {
		out.telemetry = d.Telemetry
	}
	if out.reported, err = alerts(d.Reported); err != nil {
		return row{}, err
	}
	if out.raised, err = alerts(d.Raised); err != nil {
		return row{}, err
	}
	return out, nil
}

func alerts(as []protocol.Alert) ([]byte, error) {
	if len(as) == 0 {
		return nil, nil
	}
	return json.Marshal(as)
}

func (r row) device() (store.Device, error) {
	rep := &protocol.Replica{Side: protocol.ControllerSide, VC: r.vc, Src: r.src}
	if err := json.Unmarshal(r.props, &rep.Props); err != nil {
		return store.Device{}, fmt.Errorf("props: %w", err)
	}
	d := store.Device{ID: r.id, Replica: rep, Owed: r.owed, Online: r.online}
	if r.lastSeen != nil {
		d.LastSeen = r.lastSeen.UTC()
	}
	if r.telemetry != nil {
		d.Telemetry = json.RawMessage(r.telemetry)
	}
	for _, a := range []struct {
		b  []byte
		to *[]protocol.Alert
	}{{r.reported, &d.Reported}, {r.raised, &d.Raised}} {
		if a.b == nil {
			continue
		}
		if err := json.Unmarshal(a.b, a.to); err != nil {
			return store.Device{}, fmt.Errorf("alerts: %w", err)
		}
		for i := range *a.to {
			(*a.to)[i].Since = (*a.to)[i].Since.UTC()
		}
	}
	return d, nil
}
