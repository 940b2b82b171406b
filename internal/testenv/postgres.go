package testenv

import (
	"fmt"
	"os"
	"sync"
	"testing"

	"github.com/thermofleet/thermo/internal/pgcluster"
)

// PostgresSuperuser is the role initdb makes in a test cluster; it logs in
// without a password (trust), over TCP on 127.0.0.1 only.
const PostgresSuperuser = pgcluster.Superuser

// Postgres is a throwaway PostgreSQL cluster run by a test (package
// pgcluster): initdb in a temporary directory, started on a free port of
// 127.0.0.1 that stays the same across restarts. It is stopped and removed
// when the test ends.
type Postgres struct {
	*pgcluster.Cluster
	t testing.TB

	mu  sync.Mutex
	dbs int
}

// StartPostgres makes a cluster and starts it. The test is skipped only
// when initdb is not installed (apt-get install postgresql).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	if _, err := pgcluster.BinDir(); err != nil {
		t.Skipf("testenv: %v", err)
	}
	// Not t.TempDir: its parents are 0700 root's, and the server may run
	// as another user who must reach the data directory.
	dir, err := os.MkdirTemp("", "testenv-postgres-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	c, err := pgcluster.Init(dir, FreePort(t))
	if err != nil {
		os.RemoveAll(dir)
		t.Fatalf("testenv: %v", err)
	}
	p := &Postgres{Cluster: c, t: t}
	t.Cleanup(func() {
		c.Stop("immediate")
		if t.Failed() {
			t.Logf("testenv: postgres log %s:\n%s", c.LogFile, c.Log())
		}
		os.RemoveAll(dir)
	})
	var lastErr error
	for range 5 {
		if lastErr = c.Start(); lastErr == nil {
			return p
		}
		// Most likely another process took the port in between.
		c.SetPort(FreePort(t))
	}
	t.Fatalf("testenv: start postgres: %v\nlog:\n%s", lastErr, c.Log())
	return nil
}

// Stop shuts the cluster down cleanly (pg_ctl stop -m fast).
func (p *Postgres) Stop() {
	p.t.Helper()
	if err := p.Cluster.Stop("fast"); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

// Kill stops the cluster as a crash would (pg_ctl stop -m immediate): no
// checkpoint, the next start recovers from the WAL.
func (p *Postgres) Kill() {
	p.t.Helper()
	if err := p.Cluster.Stop("immediate"); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

// Restart stops the cluster cleanly and starts it again on the same port.
func (p *Postgres) Restart() {
	p.t.Helper()
	p.Stop()
	if err := p.Start(); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

// NewDatabase creates an empty database of its own for a test (or a part
// of one) and returns its URL.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	p.mu.Lock()
	p.dbs++
	name := fmt.Sprintf("test%d", p.dbs)
	p.mu.Unlock()
	u, err := p.CreateDB(name)
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return u
}
