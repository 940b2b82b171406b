package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/thermofleet/thermo/controllerlite/store"
)

// Renew records that instance name lives for lease more, by the database's
// clock (now()), and returns the names of the live instances (its own
// among them), sorted: the rows whose lease has not expired. One
// statement, so the live set is read at the instant the lease was renewed.
func (s *Store) Renew(ctx context.Context, name string, lease time.Duration) ([]string, error) {
	if lease <= 0 {
		return nil, errors.New("renew: lease must be positive")
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var live []string
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `INSERT INTO controllers (name, expires_at) VALUES ($1, now() + $2::interval)
			ON CONFLICT (name) DO UPDATE SET expires_at = EXCLUDED.expires_at`, name, lease); err != nil {
			return err
		}
		rows, err := tx.Query(ctx, `SELECT name FROM controllers WHERE expires_at > now() ORDER BY name`)
		if err != nil {
			return err
		}
		live, err = pgx.CollectRows(rows, pgx.RowTo[string])
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("renew lease of %s: %w", name, err)
	}
	return live, nil
}

// Release ends instance name's lease at once (a clean stop): the others
// take its devices on their next renewal instead of after the lease.
func (s *Store) Release(ctx context.Context, name string) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	if _, err := s.pool.Exec(ctx, `DELETE FROM controllers WHERE name = $1`, name); err != nil {
		return fmt.Errorf("release lease of %s: %w", name, err)
	}
	return nil
}

// Get returns the stored record of device id; ok is false when there is
// none.
func (s *Store) Get(id string) (dev store.Device, ok bool, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		dev, ok, err = getRow(ctx, tx, id, "")
		return err
	})
	return dev, ok, err
}

// Update changes device id's record in one transaction that holds its row
// (SELECT ... FOR UPDATE) from the read to the write: fn gets the stored
// record (ok false when there is none) and returns the record to write, or
// an error that rolls everything back. Two instances writing one device
// through Update are serialised by the row; Put's clock check still
// applies, so a writer that did not start from the stored state cannot
// overwrite it.
func (s *Store) Update(id string, fn func(stored store.Device, ok bool) (store.Device, error)) error {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		stored, ok, err := getRow(ctx, tx, id, " FOR UPDATE")
		if err != nil {
			return err
		}
		rec, err := fn(stored, ok)
		if err != nil {
			return err
		}
		if rec.ID != id {
			return fmt.Errorf("update %s: the record returned is %q's", id, rec.ID)
		}
		if ok && !stored.Replica.VC.LessEq(rec.Replica.VC) {
			return fmt.Errorf("device %s: stored %v, writing %v: %w", id, stored.Replica.VC, rec.Replica.VC, ErrClockBehind)
		}
		if err := store.Check(rec); err != nil {
			return fmt.Errorf("update: %w", err)
		}
		r, err := toRow(rec)
		if err != nil {
			return fmt.Errorf("update %s: %w", id, err)
		}
		_, err = tx.Exec(ctx, upsertRow, r.id, int64(r.vc[0]), int64(r.vc[1]), r.props, r.src, r.owed, r.online, r.lastSeen, r.telemetry, r.reported, r.raised)
		return err
	})
}

// getRow reads one record inside tx; lock is "" or " FOR UPDATE".
func getRow(ctx context.Context, tx pgx.Tx, id, lock string) (store.Device, bool, error) {
	var r row
	var c, d int64
	err := tx.QueryRow(ctx, `SELECT id, vc_c, vc_d, props, src, owed, online, last_seen, telemetry, reported, raised
		FROM devices WHERE id = $1`+lock, id).Scan(&r.id, &c, &d, &r.props, &r.src, &r.owed, &r.online, &r.lastSeen, &r.telemetry, &r.reported, &r.raised)
	if errors.Is(err, pgx.ErrNoRows) {
		return store.Device{}, false, nil
	}
	if err != nil {
		return store.Device{}, false, fmt.Errorf("read device %s: %w", id, err)
	}
	r.vc = [2]uint64{uint64(c), uint64(d)}
	dev, err := r.device()
	if err != nil {
		return store.Device{}, false, fmt.Errorf("read device %q: %w", id, err)
	}
	if err := store.Normalize(dev.Replica); err != nil {
		return store.Device{}, false, fmt.Errorf("read device %q: %w", id, err)
	}
	return dev, true, nil
}
