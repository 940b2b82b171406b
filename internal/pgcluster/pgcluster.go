// Package pgcluster runs a throwaway PostgreSQL cluster: initdb in a
// directory of its own, the server on a port of 127.0.0.1 that stays the
// same across restarts, trust authentication for one superuser over TCP on
// 127.0.0.1 only. The tests (internal/testenv) and the mttr harness's
// cluster faults use it; nothing in the product does.
//
// PostgreSQL refuses to run as root. Run as root (CI in a container), the
// cluster's files belong to, and its server runs as, the user "postgres"
// (Debian's package makes it) or else "nobody".
package pgcluster

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
	"time"
)

// Superuser is the role initdb makes; it logs in without a password.
const Superuser = "thermo"

// BinDirs are where Init looks for initdb, after PATH: a link in
// /usr/local/bin, then Debian's postgresql package.
var BinDirs = []string{"/usr/local/bin", "/usr/lib/postgresql/*/bin"}

// StartTimeout bounds a start.
const StartTimeout = 60 * time.Second

// ErrNotInstalled: initdb was found nowhere (apt-get install postgresql).
var ErrNotInstalled = errors.New("initdb not found")

// Cluster is one PostgreSQL cluster.
type Cluster struct {
	bin  string // directory of initdb, pg_ctl, createdb
	dir  string // everything: data, socket, log
	port int
	cred *syscall.Credential // nil unless run as root
	// DataDir is the cluster's data directory; LogFile the server's log.
	DataDir, LogFile string

	mu      sync.Mutex
	running bool
}

// Init makes a cluster in dir (created if missing; for a server run as
// another user than root, its parents must let that user through) that will
// listen on port.
func Init(dir string, port int) (*Cluster, error) {
	bin, err := BinDir()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	c := &Cluster{bin: bin, dir: dir, port: port, DataDir: filepath.Join(dir, "data"), LogFile: filepath.Join(dir, "postgres.log")}
	if os.Geteuid() == 0 {
		if c.cred, err = unprivileged(); err != nil {
			return nil, fmt.Errorf("postgres: %w", err)
		}
		if err := os.Chown(dir, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
			return nil, err
		}
	}
	if out, err := c.run("initdb", "-D", c.DataDir, "-U", Superuser, "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		return nil, fmt.Errorf("initdb: %w\n%s", err, out)
	}
	return c, nil
}

// BinDir finds initdb: on PATH, else in BinDirs (the newest version
// first). pg_ctl and createdb are beside it.
func BinDir() (string, error) {
	var found []string
	if p, err := exec.LookPath("initdb"); err == nil {
		found = append(found, p)
	}
	for _, d := range BinDirs {
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
	return "", fmt.Errorf("%w on PATH nor in %v (apt-get install postgresql)", ErrNotInstalled, BinDirs)
}

// unprivileged is the user a root process runs PostgreSQL as.
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
func (c *Cluster) run(prog string, args ...string) ([]byte, error) {
	cmd := exec.Command(filepath.Join(c.bin, prog), args...)
	cmd.Dir = c.dir
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	return cmd.CombinedOutput()
}

// SetPort changes the port of a stopped cluster (the next Start listens
// there).
func (c *Cluster) SetPort(port int) { c.port = port }

// Start starts the stopped cluster and waits until it accepts connections.
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.running {
		return errors.New("postgres is already running")
	}
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1", c.port, c.dir)
	if out, err := c.run("pg_ctl", "start", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", strconv.Itoa(int(StartTimeout/time.Second)), "-o", opts); err != nil {
		return fmt.Errorf("pg_ctl start: %w\n%s", err, out)
	}
	c.running = true
	return nil
}

// Stop stops the cluster: mode "fast" shuts it down cleanly, "immediate"
// as a crash would (no checkpoint: the next start recovers from the WAL).
func (c *Cluster) Stop(mode string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.running {
		return nil
	}
	if out, err := c.run("pg_ctl", "stop", "-D", c.DataDir, "-m", mode, "-w"); err != nil {
		return fmt.Errorf("pg_ctl stop -m %s: %w\n%s", mode, err, out)
	}
	c.running = false
	return nil
}

// CreateDB creates an empty database and returns its URL.
func (c *Cluster) CreateDB(name string) (string, error) {
	cmd := exec.Command(filepath.Join(c.bin, "createdb"), "-h", "127.0.0.1", "-p", strconv.Itoa(c.port), "-U", Superuser, name)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("createdb %s: %w\n%s", name, err, out)
	}
	return c.URL(name), nil
}

// Addr is the server's address, "127.0.0.1:PORT".
func (c *Cluster) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(c.port)) }

// URL is the connection URL of database db as Superuser.
func (c *Cluster) URL(db string) string {
	u := url.URL{Scheme: "postgres", User: url.User(Superuser), Host: c.Addr(), Path: "/" + db, RawQuery: "sslmode=disable"}
	return u.String()
}

// Log returns what the server has logged.
func (c *Cluster) Log() string {
	b, err := os.ReadFile(c.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(b)
}
