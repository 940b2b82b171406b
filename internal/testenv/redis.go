package testenv

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// RedisBinary is where tests look for Redis (Debian's redis-server).
const RedisBinary = "/usr/bin/redis-server"

// Redis is a throwaway redis-server on a free port of 127.0.0.1, without
// persistence, killed when the test ends: what the aedes cluster's nodes
// share in tests.
type Redis struct {
	port int
	// LogFile is the server's log.
	LogFile string
}

// StartRedis starts redis-server and waits until it accepts connections.
// The test is skipped only when redis-server is not installed.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := RedisBinary
	if _, err := os.Stat(bin); errors.Is(err, os.ErrNotExist) {
		if bin, err = exec.LookPath("redis-server"); err != nil {
			t.Skipf("testenv: redis-server not installed (apt-get install redis-server)")
		}
	}
	dir := t.TempDir()
	r := &Redis{LogFile: filepath.Join(dir, "redis.log")}
	var lastErr error
	for range 5 {
		r.port = FreePort(t)
		cmd := exec.Command(bin, "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
			"--dir", dir, "--logfile", r.LogFile)
		if err := cmd.Start(); err != nil {
			t.Fatalf("testenv: run %s: %v", bin, err)
		}
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		t.Cleanup(func() { cmd.Process.Kill(); <-done })
		if lastErr = waitListening(r.Addr(), done); lastErr == nil {
			return r
		}
	}
	log, _ := os.ReadFile(r.LogFile)
	t.Fatalf("testenv: start redis: %v\n%s", lastErr, log)
	return nil
}

// waitListening waits until addr accepts TCP connections, or the process
// whose exit closes done has exited.
func waitListening(addr string, done <-chan struct{}) error {
	deadline := time.Now().Add(StartTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("exited before listening on %s", addr)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not listening on %s within %v: %v", addr, StartTimeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a port: there is nothing to wait on
	}
}

// Addr is the server's address, "127.0.0.1:PORT".
func (r *Redis) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(r.port)) }

// URL is the server's URL, redis://127.0.0.1:PORT/0.
func (r *Redis) URL() string { return "redis://" + r.Addr() + "/0" }
