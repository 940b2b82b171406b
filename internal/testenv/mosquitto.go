package testenv

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/provisioning"
)

// MosquittoBinary is where tests look for Mosquitto (Debian's package).
const MosquittoBinary = "/usr/sbin/mosquitto"

// StartTimeout bounds how long a broker may take to listen.
const StartTimeout = 10 * time.Second

// FreePort returns a TCP port that was free on 127.0.0.1 a moment ago.
// Another process may take it before the caller binds it; StartMosquitto
// retries with another port when that happens.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// MosquittoOptions tunes StartMosquitto. The zero value (or nil) is a broker
// without persistence on topic root "thermo".
type MosquittoOptions struct {
	// Persistence keeps retained messages and sessions in a directory of
	// the test across restarts: saved after every change and at SIGTERM
	// (Terminate). Without it every Start is a fresh broker that lost them.
	Persistence bool
	// TopicRoot of the ACL; default "thermo".
	TopicRoot string
	// Verbose logs everything (log_type all), denied publishes included.
	Verbose bool
	// Global holds extra configuration lines placed before the listener.
	Global []string
	// Controllers are further controller CNs (controller-NAME) for the ACL.
	Controllers []string
	// CRLFile, when set, is the configuration's crlfile (it must exist
	// before the broker starts).
	CRLFile string
	// Users, when set, make the broker one like Home Assistant's Mosquitto
	// add-on instead of the fleet's: clients log in with these user names
	// and passwords (a password_file made by mosquitto_passwd), no client
	// certificate, no anonymous login, every user may read and write every
	// topic. Its listener is TLS with the PKI's server certificate
	// (mqtts://), or plain (mqtt://) when StartMosquitto's pki is nil.
	Users map[string]string
}

// Mosquitto is a real Mosquitto broker run by a test with the configuration
// provisioning.MosquittoConfig generates, listening with TLS on a loopback
// port that stays the same across restarts. It is killed when the test ends.
type Mosquitto struct {
	t      testing.TB
	port   int
	dir    string
	scheme string // of URL: mqtts, or mqtt for a plain password broker
	// ConfigFile, ACLFile and LogFile are the files of this broker; the log
	// gathers every run (Mosquitto buffers it: do not wait on it).
	ConfigFile, ACLFile, LogFile string
	// DataDir holds the persistence file when Persistence is on.
	DataDir string

	mu   sync.Mutex
	proc *os.Process
	done chan struct{} // closed when proc has exited
}

// StartMosquitto starts Mosquitto for pki on a free port of 127.0.0.1 and
// waits until it accepts connections. The test is skipped only when
// /usr/sbin/mosquitto does not exist. A nil opts means the defaults.
func StartMosquitto(t testing.TB, pki *PKI, opts *MosquittoOptions) *Mosquitto {
	t.Helper()
	if _, err := os.Stat(MosquittoBinary); errors.Is(err, os.ErrNotExist) {
		t.Skipf("testenv: %s not installed (apt-get install mosquitto)", MosquittoBinary)
	}
	var o MosquittoOptions
	if opts != nil {
		o = *opts
	}
	dir := t.TempDir()
	m := &Mosquitto{
		t:       t,
		dir:     dir,
		scheme:  "mqtts",
		LogFile: filepath.Join(dir, "mosquitto.log"),
		DataDir: filepath.Join(dir, "data"),
	}
	if err := os.MkdirAll(m.DataDir, 0o700); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	t.Cleanup(func() {
		m.kill()
		if t.Failed() {
			t.Logf("testenv: mosquitto log %s:\n%s", m.LogFile, m.Log())
		}
	})
	if o.Users != nil && pki == nil {
		m.scheme = "mqtt"
	}
	var lastErr error
	for attempt := 0; attempt < 5; attempt++ {
		m.port = FreePort(t)
		write := m.writeConfig
		if o.Users != nil {
			write = m.writePasswordConfig
		}
		if err := write(pki, o); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		if lastErr = m.start(); lastErr == nil {
			return m
		}
		// Most likely another process took the port in between: try another.
	}
	t.Fatalf("testenv: start mosquitto: %v\nlog:\n%s", lastErr, m.Log())
	return nil
}

func (m *Mosquitto) writeConfig(pki *PKI, o MosquittoOptions) error {
	global := m.globalConfig(o)
	var err error
	m.ConfigFile, m.ACLFile, err = provisioning.WriteMosquittoConfig(m.dir, provisioning.MosquittoOptions{
		Port:        m.port,
		BindAddress: "127.0.0.1",
		CAFile:      pki.CAFile,
		CertFile:    pki.ServerCert,
		KeyFile:     pki.ServerKey,
		TopicRoot:   o.TopicRoot,
		Controllers: o.Controllers,
		CRLFile:     o.CRLFile,
		Global:      global,
	})
	return err
}

// writePasswordConfig writes the configuration of a password broker
// (MosquittoOptions.Users), its password file made by mosquitto_passwd.
func (m *Mosquitto) writePasswordConfig(pki *PKI, o MosquittoOptions) error {
	const passwd = "/usr/bin/mosquitto_passwd"
	if _, err := os.Stat(passwd); errors.Is(err, os.ErrNotExist) {
		m.t.Skipf("testenv: %s not installed (apt-get install mosquitto)", passwd)
	}
	pwFile := filepath.Join(m.dir, "passwd")
	if err := os.WriteFile(pwFile, nil, 0o600); err != nil {
		return err
	}
	for _, user := range slices.Sorted(maps.Keys(o.Users)) {
		if out, err := exec.Command(passwd, "-b", pwFile, user, o.Users[user]).CombinedOutput(); err != nil {
			return fmt.Errorf("mosquitto_passwd %s: %v: %s", user, err, out)
		}
	}
	lines := append(m.globalConfig(o),
		"per_listener_settings false",
		"allow_anonymous false",
		"password_file "+pwFile,
		fmt.Sprintf("listener %d 127.0.0.1", m.port),
		"set_tcp_nodelay true",
	)
	if pki != nil {
		lines = append(lines, "certfile "+pki.ServerCert, "keyfile "+pki.ServerKey)
	}
	m.ConfigFile = filepath.Join(m.dir, "mosquitto.conf")
	return os.WriteFile(m.ConfigFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// globalConfig is the configuration both kinds of broker begin with.
func (m *Mosquitto) globalConfig(o MosquittoOptions) []string {
	global := []string{
		"log_dest stderr",
		"log_timestamp_format %Y-%m-%dT%H:%M:%S",
	}
	if o.Verbose {
		global = append(global, "log_type all")
	}
	if os.Geteuid() == 0 {
		// Started as root, Mosquitto drops to user "mosquitto", which cannot
		// read the 0600 keys in the test's private directory.
		global = append(global, "user root")
	}
	if o.Persistence {
		global = append(global,
			"persistence true",
			"persistence_location "+m.DataDir+"/",
			"autosave_on_changes true",
			"autosave_interval 1",
		)
	} else {
		global = append(global, "persistence false")
	}
	return append(global, o.Global...)
}

// start runs the broker and waits for its port.
func (m *Mosquitto) start() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc != nil {
		return errors.New("mosquitto is already running")
	}
	logf, err := os.OpenFile(m.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== testenv: starting mosquitto on port %d at %s\n", m.port, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(MosquittoBinary, "-c", m.ConfigFile)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("run %s: %w", MosquittoBinary, err)
	}
	done := make(chan struct{})
	go func() {
		cmd.Wait()
		close(done)
	}()
	addr := m.Addr()
	deadline := time.Now().Add(StartTimeout)
	for {
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited before listening on %s (%s)", addr, cmd.ProcessState)
		default:
		}
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			m.proc, m.done = cmd.Process, done
			return nil
		}
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			<-done
			return fmt.Errorf("mosquitto did not listen on %s within %v: %v", addr, StartTimeout, err)
		}
		time.Sleep(10 * time.Millisecond) // polling a port: there is nothing to wait on
	}
}

// Addr is the broker's address, "127.0.0.1:PORT".
func (m *Mosquitto) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(m.port)) }

// Port is the broker's TCP port; it stays the same across restarts.
func (m *Mosquitto) Port() int { return m.port }

// URL is the broker URL for clients, "mqtts://localhost:PORT": the host
// name is one the server certificate is valid for. A plain password broker's
// is "mqtt://localhost:PORT".
func (m *Mosquitto) URL() string { return m.scheme + "://localhost:" + strconv.Itoa(m.port) }

// Start starts the broker again on the same port after Kill or Terminate
// and waits until it accepts connections.
func (m *Mosquitto) Start() {
	m.t.Helper()
	var err error
	// The old process has exited, but give the port a few tries.
	for attempt := 0; attempt < 3; attempt++ {
		if err = m.start(); err == nil {
			return
		}
	}
	m.t.Fatalf("testenv: restart mosquitto: %v\nlog:\n%s", err, m.Log())
}

// Kill kills the broker with SIGKILL (a crash) and waits for it to exit.
// With Persistence, a change made in the last moment may be lost, as in a
// real crash.
func (m *Mosquitto) Kill() { m.signalAndWait(syscall.SIGKILL) }

// Terminate stops the broker with SIGTERM (a clean shutdown: persistence is
// saved) and waits for it to exit.
func (m *Mosquitto) Terminate() { m.signalAndWait(syscall.SIGTERM) }

// Restart is Terminate then Start.
func (m *Mosquitto) Restart() {
	m.t.Helper()
	m.Terminate()
	m.Start()
}

// Hangup sends SIGHUP: Mosquitto reloads its configuration.
func (m *Mosquitto) Hangup() { m.signal(syscall.SIGHUP) }

// Stop freezes the broker with SIGSTOP: connections stay open but nothing
// answers (a hung broker). Cont resumes it.
func (m *Mosquitto) Stop() { m.signal(syscall.SIGSTOP) }

// Cont resumes a broker frozen by Stop.
func (m *Mosquitto) Cont() { m.signal(syscall.SIGCONT) }

// Pid is the process id of the running broker, 0 when it is not running.
func (m *Mosquitto) Pid() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return 0
	}
	return m.proc.Pid
}

// Running reports whether the broker process is alive (stopped counts).
func (m *Mosquitto) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.proc != nil
}

// WipeData deletes the persistence file, so the next Start is a broker that
// lost its retained messages and sessions. The broker must not be running.
func (m *Mosquitto) WipeData() {
	m.t.Helper()
	if m.Running() {
		m.t.Fatalf("testenv: WipeData on a running mosquitto: Kill or Terminate it first")
	}
	entries, err := os.ReadDir(m.DataDir)
	if err != nil {
		m.t.Fatalf("testenv: %v", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(m.DataDir, e.Name())); err != nil {
			m.t.Fatalf("testenv: %v", err)
		}
	}
}

// Log returns what the broker logged so far (possibly behind: Mosquitto
// buffers its log).
func (m *Mosquitto) Log() string {
	b, err := os.ReadFile(m.LogFile)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	return string(bytes.TrimSpace(b))
}

func (m *Mosquitto) signal(sig syscall.Signal) {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		m.t.Fatalf("testenv: mosquitto is not running")
	}
	if err := m.proc.Signal(sig); err != nil {
		m.t.Fatalf("testenv: signal mosquitto: %v", err)
	}
}

func (m *Mosquitto) signalAndWait(sig syscall.Signal) {
	m.t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		m.t.Fatalf("testenv: mosquitto is not running")
	}
	m.proc.Signal(syscall.SIGCONT) // a stopped process would not act on SIGTERM
	if err := m.proc.Signal(sig); err != nil {
		m.t.Fatalf("testenv: signal mosquitto: %v", err)
	}
	select {
	case <-m.done:
	case <-time.After(StartTimeout):
		m.proc.Kill()
		<-m.done
		m.t.Errorf("testenv: mosquitto ignored %v for %v; killed", sig, StartTimeout)
	}
	m.proc, m.done = nil, nil
}

// kill is the cleanup: no t.Fatal, the test may be over.
func (m *Mosquitto) kill() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.proc == nil {
		return
	}
	m.proc.Kill()
	<-m.done
	m.proc, m.done = nil, nil
}
