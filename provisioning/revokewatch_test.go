package provisioning_test

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// TestRevocationWatch: a change of the file (another process's `pki
// revoke`) reaches the running side, through Fresh at once and through
// OnChange within the poll; a file that does not read keeps the list in
// force.
func TestRevocationWatch(t *testing.T) {
	dir := t.TempDir()
	w, err := provisioning.NewRevocationWatch(nil, dir)
	if err != nil {
		t.Fatal(err)
	}
	var changes atomic.Int32
	w.OnChange(func(*provisioning.Revocations) { changes.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx, 0)

	if _, _, err := provisioning.Revoke(dir, "", provisioning.Revocation{ID: "d1"}); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.Fresh().RevokedID("d1"); !ok {
		t.Fatal("Fresh does not see the revocation just written")
	}
	testenv.WaitFor(t, "OnChange after the revocation", func() bool { return changes.Load() >= 1 })
	if err := os.WriteFile(filepath.Join(dir, provisioning.RevokedFile), []byte("{half"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := w.Fresh().RevokedID("d1"); !ok {
		t.Error("a broken file un-revoked d1")
	}
	if _, ok := w.List().RevokedID("d1"); !ok {
		t.Error("a broken file un-revoked d1 in the list in force")
	}
}
