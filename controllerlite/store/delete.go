package store

import (
	"fmt"

	"go.etcd.io/bbolt"
)

// Delete removes the records of ids in one transaction; an id without a
// record is no error.
func (s *Store) Delete(ids ...string) error {
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketDevices)
		for _, id := range ids {
			if err := b.Delete([]byte(id)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store delete: %w", err)
	}
	s.release.AfterWrite()
	return nil
}
