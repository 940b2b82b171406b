package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// hello connects to the broker at addr as id with conf (whose session
// cache it shares with the other calls), sends an MQTT CONNECT and reads
// the CONNACK, which also reads the session tickets the broker sends after
// the handshake. It reports whether the TLS session was resumed, and an
// error when the broker refused the connection (in the handshake or at
// CONNECT).
func hello(addr string, conf *tls.Config, id string) (resumed bool, err error) {
	raw, err := net.DialTimeout("tcp", addr, waitTimeout)
	if err != nil {
		return false, err
	}
	defer raw.Close()
	if err := raw.SetDeadline(time.Now().Add(waitTimeout)); err != nil {
		return false, err
	}
	tc := tls.Client(raw, conf)
	if err := tc.Handshake(); err != nil {
		return false, fmt.Errorf("handshake: %w", err)
	}
	resumed = tc.ConnectionState().DidResume
	// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id.
	pkt := append([]byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}, id...)
	if _, err := tc.Write(pkt); err != nil {
		return resumed, fmt.Errorf("CONNECT: %w", err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(tc, ack); err != nil {
		return resumed, fmt.Errorf("CONNACK: %w", err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		return resumed, fmt.Errorf("CONNACK % x: refused", ack)
	}
	return resumed, nil
}

// clientConf is a device's TLS configuration with a session cache, as
// transport makes it.
func clientConf(t *testing.T, pki *testenv.PKI, certFile, keyFile string) (*tls.Config, *ticketLog) {
	conf := pki.ClientTLS(t, certFile, keyFile)
	tl := &ticketLog{ClientSessionCache: tls.NewLRUClientSessionCache(4)}
	conf.ClientSessionCache = tl
	return conf, tl
}

// ticketLog is a session cache that keeps the last ticket offered and
// the last one received.
type ticketLog struct {
	tls.ClientSessionCache
	mu              sync.Mutex
	offered, issued []byte
}

func (l *ticketLog) Get(key string) (*tls.ClientSessionState, bool) {
	cs, ok := l.ClientSessionCache.Get(key)
	if ok && cs != nil {
		t, _, _ := cs.ResumptionState()
		l.mu.Lock()
		l.offered = t
		l.mu.Unlock()
	}
	return cs, ok
}

func (l *ticketLog) Put(key string, cs *tls.ClientSessionState) {
	l.ClientSessionCache.Put(key, cs)
	if cs != nil {
		t, _, _ := cs.ResumptionState()
		l.mu.Lock()
		l.issued = t
		l.mu.Unlock()
	}
}

// sameBoot reports whether the last ticket offered and the last issued
// begin with one broker process's id.
func (l *ticketLog) sameBoot() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.offered) > bootIDLen && len(l.issued) > bootIDLen && bytes.Equal(l.offered[:bootIDLen], l.issued[:bootIDLen])
}

// writeCAFile writes the PEM of cas to a new file and returns its path.
func writeCAFile(t *testing.T, path string, cas ...*provisioning.CA) string {
	t.Helper()
	var pem []byte
	for _, ca := range cas {
		pem = append(pem, ca.CertPEM...)
	}
	if err := os.WriteFile(path, pem, 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestResumption: a device that was connected to the embedded broker
// resumes its TLS session after the broker restarted with the same data
// directory (the ticket keys are in it), and not with another data
// directory or none; and resuming never lets in what a full handshake
// would refuse: a certificate revoked, expired, or from a CA the broker no
// longer trusts (after a restart with another CA file, or a reload of it).
func TestResumption(t *testing.T) {
	pki := testenv.NewPKI(t)
	var mu sync.Mutex
	revokedIDs := map[string]bool{}
	revoked := func(c *x509.Certificate) (string, bool) {
		mu.Lock()
		defer mu.Unlock()
		return "stolen", revokedIDs[c.Subject.CommonName]
	}
	tests := []struct {
		name string
		// cert issues the device's certificate (nil: pki.Client).
		cert func(t *testing.T, id string) (certFile, keyFile string)
		// between runs after the first connection, before the second;
		// the second connection goes to the broker it returns.
		between func(t *testing.T, tb *testBroker, o Options, id, certFile string) *testBroker
		resumed bool
		refused []string // a log line with these parts explains the refusal
	}{
		{name: "restart, same data dir", resumed: true,
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				tb.Close()
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "restart, other data dir",
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				tb.Close()
				o.DataDir = t.TempDir()
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "restart, no data dir",
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				tb.Close()
				o.DataDir = ""
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "no restart", resumed: true,
			between: func(_ *testing.T, tb *testBroker, _ Options, _, _ string) *testBroker { return tb }},
		{name: "revoked since, same broker", refused: []string{"TLS handshake failed", "resumed TLS session", "certificate revoked: stolen"},
			between: func(_ *testing.T, tb *testBroker, _ Options, id, _ string) *testBroker {
				mu.Lock()
				revokedIDs[id] = true
				mu.Unlock()
				return tb
			}},
		{name: "revoked since, restart", refused: []string{"TLS handshake failed", "resumed TLS session", "certificate revoked: stolen"},
			between: func(t *testing.T, tb *testBroker, o Options, id, _ string) *testBroker {
				tb.Close()
				mu.Lock()
				revokedIDs[id] = true
				mu.Unlock()
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "expired since, restart", refused: []string{"TLS handshake failed", "expired"},
			cert: func(t *testing.T, id string) (string, string) {
				// Valid for three more seconds: long enough for the first
				// connection.
				certPEM, keyPEM, err := pki.CA.IssueClient(id, &provisioning.IssueOptions{
					NotBefore: time.Now().Add(-time.Hour), Validity: time.Hour + 3*time.Second})
				if err != nil {
					t.Fatal(err)
				}
				dir := t.TempDir()
				c, k := filepath.Join(dir, id+".crt"), filepath.Join(dir, id+".key")
				if err := provisioning.WriteCertKey(c, k, certPEM, keyPEM); err != nil {
					t.Fatal(err)
				}
				return c, k
			},
			between: func(t *testing.T, tb *testBroker, o Options, _, certFile string) *testBroker {
				tb.Close()
				leaf, err := provisioning.ReadCertificate(certFile)
				if err != nil {
					t.Fatal(err)
				}
				testenv.WaitFor(t, "the certificate to expire", func() bool { return time.Now().After(leaf.NotAfter) })
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "CA replaced, restart", refused: []string{"TLS handshake failed", "didn't provide a certificate"},
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				tb.Close()
				writeCAFile(t, o.CAFile, pki.Foreign)
				return startBrokerWith(t, pki, o, nil)
			}},
		{name: "CA reloaded, old CA kept",
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				writeCAFile(t, o.CAFile, pki.CA, pki.Foreign)
				if err := tb.ReloadCertificate(); err != nil {
					t.Fatal(err)
				}
				return tb
			}},
		{name: "CA reloaded, old CA taken out", refused: []string{"TLS handshake failed", "didn't provide a certificate"},
			between: func(t *testing.T, tb *testBroker, o Options, _, _ string) *testBroker {
				writeCAFile(t, o.CAFile, pki.Foreign)
				if err := tb.ReloadCertificate(); err != nil {
					t.Fatal(err)
				}
				return tb
			}},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprintf("d%d", i+1)
			top := t.TempDir()
			o := Options{DataDir: filepath.Join(top, "data"), Revoked: revoked,
				CAFile: writeCAFile(t, filepath.Join(top, "ca.crt"), pki.CA)}
			certFile, keyFile := pki.Client(t, id)
			if tc.cert != nil {
				certFile, keyFile = tc.cert(t, id)
			}
			conf, tickets := clientConf(t, pki, certFile, keyFile)
			tb := startBrokerWith(t, pki, o, nil)
			if resumed, err := hello(tb.Addr().String(), conf, id); err != nil || resumed {
				t.Fatalf("first connection: resumed %v, %v; want a full handshake", resumed, err)
			}
			tb2 := tc.between(t, tb, o, id, certFile)
			resumed, err := hello(tb2.Addr().String(), conf, id)
			if tc.refused != nil {
				if err == nil {
					t.Fatalf("second connection accepted (resumed %v), want refused", resumed)
				}
				tb2.log.waitFor(t, tc.refused...)
				if st := tb2.Stats(); st.TLSResumed != 0 {
					t.Errorf("stats %+v: a session resumed", st)
				}
				return
			}
			if err != nil {
				t.Fatalf("second connection: %v", err)
			}
			if resumed != tc.resumed {
				t.Fatalf("second connection: resumed %v, want %v", resumed, tc.resumed)
			}
			if !tc.resumed {
				return
			}
			// The process that issued the resumed ticket: the same one
			// unless the broker restarted (transport's takeover policy).
			if same := tickets.sameBoot(); same != (tb2 == tb) {
				t.Errorf("tickets of one broker process: %v, want %v", same, tb2 == tb)
			}
			st := tb2.Stats()
			if st.TLSResumed < 1 || st.TLSHandshakes < st.TLSResumed {
				t.Errorf("stats %+v: want the resumed handshake counted", st)
			}
			tb2.log.waitFor(t, "client connected", "client="+id, "tls_resumed=true")
		})
	}
}

// TestTicketKeyFile: the keys are kept in the data directory, readable by
// their owner only, the same after a restart; a file that holds no keys
// is replaced (with a warning), not a reason to refuse to start.
func TestTicketKeyFile(t *testing.T) {
	pki := testenv.NewPKI(t)
	for _, tc := range []struct {
		name   string
		before []byte      // the file's contents before the start; nil: none
		mode   os.FileMode // its mode
		warned string      // what the log warns of, if anything
		kept   bool        // the keys before the start are still there
	}{
		{name: "no file"},
		{name: "keys", before: mustKeys(t, time.Now().Add(-time.Hour)), mode: 0o600, kept: true},
		{name: "keys readable by others", before: mustKeys(t, time.Now().Add(-time.Hour)), mode: 0o644, kept: true,
			warned: "session-ticket key file readable by others"},
		{name: "not JSON", before: []byte("garbage\n"), mode: 0o600, warned: "session-ticket key file unreadable"},
		{name: "short key", before: []byte(`{"keys":[{"created":"2026-01-01T00:00:00Z","key":"AAAA"}]}`), mode: 0o600,
			warned: "session-ticket key file unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, TicketKeyFile)
			if tc.before != nil {
				if err := os.WriteFile(path, tc.before, tc.mode); err != nil {
					t.Fatal(err)
				}
				if err := os.Chmod(path, tc.mode); err != nil { // past the umask
					t.Fatal(err)
				}
			}
			tb := startBroker(t, pki, dir, nil)
			if got := tb.log.has("WARN", "session-ticket key file"); got != (tc.warned != "") || got && !tb.log.has(tc.warned) {
				t.Errorf("warnings %q, want %q", tb.log.all(), tc.warned)
			}
			st, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if st.Mode().Perm() != 0o600 {
				t.Errorf("mode %v, want 0600", st.Mode().Perm())
			}
			after, err := readTicketKeys(path)
			if err != nil || len(after) != 1 {
				t.Fatalf("file after the start: %d keys, %v; want one", len(after), err)
			}
			var before ticketFile
			_ = json.Unmarshal(tc.before, &before)
			if kept := len(before.Keys) > 0 && bytes.Equal(before.Keys[0].Key, after[0].Key); kept != tc.kept {
				t.Errorf("the key before the start kept: %v, want %v", kept, tc.kept)
			}
			tb.Close()
			tb2 := startBroker(t, pki, dir, nil)
			again, err := readTicketKeys(path)
			if err != nil || len(again) != 1 || !bytes.Equal(again[0].Key, after[0].Key) {
				t.Errorf("after a restart: %v, %v; want the same key", again, err)
			}
			tb2.Close()
		})
	}
}

func mustKeys(t *testing.T, created ...time.Time) []byte {
	t.Helper()
	f := ticketFile{}
	for i, c := range created {
		f.Keys = append(f.Keys, ticketKey{Created: c.UTC().Truncate(time.Second), Key: bytes.Repeat([]byte{byte(i + 1)}, 32)})
	}
	data, err := json.Marshal(f)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// TestRotateTicketKeys: a new key every TicketKeyRotation, each kept for
// TicketLifetime after it stopped encrypting, none from the future.
func TestRotateTicketKeys(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	day := 24 * time.Hour
	keys := func(ages ...time.Duration) []ticketKey {
		var ks []ticketKey
		for i, a := range ages {
			ks = append(ks, ticketKey{Created: now.Add(-a), Key: bytes.Repeat([]byte{byte(i + 1)}, 32)})
		}
		return ks
	}
	for _, tc := range []struct {
		name    string
		in      []ticketKey
		want    []time.Duration // ages of the keys after, newest first (0: the new key)
		changed bool
	}{
		{"none", nil, []time.Duration{0}, true},
		{"fresh", keys(time.Hour), []time.Duration{time.Hour}, false},
		{"due", keys(day), []time.Duration{0, day}, true},
		{"a week of keys", keys(time.Hour, day+time.Hour, 2*day+time.Hour), []time.Duration{time.Hour, day + time.Hour, 2*day + time.Hour}, false},
		// The second key stopped encrypting 7 days and 1 s ago: no ticket
		// it encrypted can still be resumed.
		{"retired", keys(7*day+time.Second, 8*day), []time.Duration{0, 7*day + time.Second}, true},
		{"kept to the end of the lifetime", keys(7*day, 8*day), []time.Duration{0, 7 * day, 8 * day}, true},
		{"from the future", keys(-time.Hour, time.Hour), []time.Duration{time.Hour}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, changed, err := rotateTicketKeys(tc.in, now, func(b []byte) (int, error) { return len(b), nil })
			if err != nil {
				t.Fatal(err)
			}
			var ages []time.Duration
			for _, k := range out {
				ages = append(ages, now.Sub(k.Created))
			}
			if fmt.Sprint(ages) != fmt.Sprint(tc.want) || changed != tc.changed {
				t.Errorf("ages %v changed %v, want %v %v", ages, changed, tc.want, tc.changed)
			}
		})
	}
	if _, _, err := rotateTicketKeys(nil, now, func([]byte) (int, error) { return 0, errors.New("no entropy") }); err == nil {
		t.Error("no error without randomness")
	}
}
