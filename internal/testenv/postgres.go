package testenv

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
)

// PostgresSuperuser is the role initdb makes in a test cluster; it logs in
// without a password (trust), over TCP on 127.0.0.1 only.
const PostgresSuperuser = "thermo"

// PostgresBinDirs are where StartPostgres looks for initdb, after PATH:
// a link in /usr/local/bin, then Debian's postgresql package.
var PostgresBinDirs = []string{"/usr/local/bin", "/usr/lib/postgresql/*/bin"}

// Postgres is a throwaway PostgreSQL cluster run by a test: initdb in a
// temporary directory, pg_ctl start on a free port of 127.0.0.1 that stays
// the same across restarts. It is stopped and removed when the test ends.
//
// PostgreSQL refuses to run as root. When the test runs as root (CI in a
// container), the cluster's files belong to, and its server runs as, the
// user "postgres" (Debian's package makes it) or else "nobody".
type Postgres struct {
	t    testing.TB
	bin  string // directory of initdb, pg_ctl, createdb
	dir  string // everything: data, socket, log
	port int
	cred *syscall.Credential // nil unless run as root
	// DataDir is the cluster's data directory; LogFile the server's log.
	DataDir, LogFile string

	mu      sync.Mutex
	running bool
	dbs     int
}

// StartPostgres makes a cluster and starts it. The test is skipped only
// when initdb is not installed (apt-get install postgresql).
func StartPostgres(t testing.TB) *Postgres {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		t.Skipf("testenv: %v (apt-get install postgresql)", err)
	}
	// Not t.TempDir: its parents are 0700 root's, and the server may run
	// as another user who must reach the data directory.
	dir, err := os.MkdirTemp("", "testenv-postgres-")
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	p := &Postgres{t: t, bin: bin, dir: dir, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "postgres.log")}
	t.Cleanup(func() {
		p.stop("immediate")
		if t.Failed() {
			t.Logf("testenv: postgres log %s:\n%s", p.LogFile, p.Log())
		}
		os.RemoveAll(dir)
	})
	if os.Geteuid() == 0 {
		if p.cred, err = unprivileged(); err != nil {
			t.Fatalf("testenv: postgres: %v", err)
		}
		if err := os.Chown(dir, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	if out, err := p.run("initdb", "-D", p.DataDir, "-U", PostgresSuperuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatalf("testenv: initdb: %v\n%s", err, out)
	}
	var lastErr error
	for range 5 {
		p.port = FreePort(t)
		if lastErr = p.Start(); lastErr == nil {
			return p
		}
		// Most likely another process took the port in between.
	}
	t.Fatalf("testenv: start postgres: %v\nlog:\n%s", lastErr, p.Log())
	return nil
}

// postgresBinDir finds initdb: on PATH, else in PostgresBinDirs (the
// newest version first). pg_ctl and createdb are beside it.
func postgresBinDir() (string, error) {
	var found []string
	if p, err := exec.LookPath("initdb"); err == nil {
		found = append(found, p)
	}
	for _, d := range PostgresBinDirs {
		m, _ := filepath.Glob(filepath.Join(d, "initdb"))
		slices.Sort(m)
		slices.Reverse(m)
		found = append(found, m...)
	}
	for _, p := range found {
		// /usr/local/bin may hold links to initdb and pg_ctl alone: the
		// directory that matters is the one the link points into.
		real, err := filepath.EvalSymlinks(p)
		if err != nil {
			continue
		}
		dir := filepath.Dir(real)
		if _, err := os.Stat(filepath.Join(dir, "pg_ctl")); err == nil {
			return dir, nil
		}
	}
	return "", errors.New("initdb not found on PATH nor in " + fmt.Sprint(PostgresBinDirs))
}

// unprivileged is the user a root test runs PostgreSQL as.
func unprivileged() (*syscall.Credential, error) {
	var errs []error
	for _, name := range []string{"postgres", "nobody"} {
		u, err := user.Lookup(name)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			errs = append(errs, err)
			continue
		}
		return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
	}
	return nil, fmt.Errorf("running as root, and no user to run PostgreSQL as: %w", errors.Join(errs...))
}

// run runs one of the cluster's programs as the cluster's user.
func (p *Postgres) run(prog string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(p.bin, prog), args...)
	cmd.Dir = p.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	return cmd.CombinedOutput()
}

// Start starts the stopped cluster and waits until it accepts connections.
func (p *Postgres) Start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.running {
		return errors.New("postgres is already running")
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", p.port, p.dir)
	if out, err := p.run("pg_ctl", "start", "-D", p.DataDir, "-l", p.LogFile, "-w", "-t", strconv.Itoa(int(StartTimeout/time.Second)), "-o", opts); err != nil {
		return fmt.Errorf("pg_ctl start: %v\n%s", err, out)
	}
	p.running = true
	return nil
}

// Stop shuts the cluster down cleanly (pg_ctl stop -m fast).
func (p *Postgres) Stop() {
	p.t.Helper()
	if err := p.stop("fast"); err != nil {
		p.t.Fatalf("testenv: %v", err)
	}
}

// Kill stops the cluster as a crash would (pg_ctl stop -m immediate): no
// checkpoint, the next start recovers from the WAL.
func (p *Postgres) Kill() {
	p.t.Helper()
	if err := p.stop("immediate"); err != nil {
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

func (p *Postgres) stop(mode string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running {
		return nil
	}
	if out, err := p.run("pg_ctl", "stop", "-D", p.DataDir, "-m", mode, "-w"); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %v\n%s", mode, err, out)
	}
	p.running = false
	return nil
}

// Addr is the server's address, "127.0.0.1:PORT".
func (p *Postgres) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(p.port)) }

// URL is the connection URL of database db as PostgresSuperuser.
func (p *Postgres) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(PostgresSuperuser), Host: p.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// NewDatabase creates an empty database of its own for a test (or a part
// of one) and returns its URL.
func (p *Postgres) NewDatabase(t testing.TB) string {
	t.Helper()
	p.mu.Lock()
	p.dbs++
	name := fmt.Sprintf("test%d", p.dbs)
	p.mu.Unlock()
	cmd := exec.Command(filepath.Join(p.bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(p.port), "-U", PostgresSuperuser, name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testenv: createdb %s: %v\n%s", name, err, out)
	}
	return p.URL(name)
}

// Log returns what the server has logged.
func (p *Postgres) Log() string {
	b, err := os.ReadFile(p.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}
