package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/holdproxy"
	"github.com/thermofleet/thermo/internal/testenv"
)

// mqttHello makes one connection of c to u as Run's attempts do (c.dial:
// TCP, then TLS with c's configuration and session cache), sends an MQTT
// CONNECT and reads the CONNACK, so that the session tickets the broker
// sends after the handshake are read and cached, and reports whether the
// handshake resumed an earlier session, and whether the ticket it resumed
// and the one the broker issued came from one broker process.
func mqttHello(t *testing.T, c *Client, u *url.URL) (resumed, sameIssuer bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := c.dial(ctx, u)
	if err != nil {
		t.Fatalf("dial %s: %v", u.Host, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	id := c.ID()
	// CONNECT, MQTT 3.1.1, clean session, keep-alive 60 s, client id.
	pkt := []byte{0x10, byte(12 + len(id)), 0, 4, 'M', 'Q', 'T', 'T', 4, 0x02, 0, 60, 0, byte(len(id))}
	if _, err := conn.Write(append(pkt, id...)); err != nil {
		t.Fatalf("CONNECT to %s: %v", u.Host, err)
	}
	ack := make([]byte, 4)
	if _, err := io.ReadFull(conn, ack); err != nil {
		t.Fatalf("CONNACK from %s: %v", u.Host, err)
	}
	if ack[0] != 0x20 || ack[3] != 0 {
		t.Fatalf("CONNACK from %s: % x, want accepted", u.Host, ack)
	}
	return conn.resumed, conn.sessions.sameIssuer()
}

// TestSessionResumption: a client resumes its TLS session on every
// reconnect to a broker it was connected to before, each broker of a
// failover pair on its own (two Mosquittos on one host name: crypto/tls
// alone files sessions by name, so each broker would offer the other's
// ticket and never resume); and a renewed certificate never resumes a
// session of the old one, whose identity it would present again. A
// resumed session's tickets come from one Mosquitto process (what the
// takeover policy asks); a restarted Mosquitto resumes nothing.
func TestSessionResumption(t *testing.T) {
	pki := testenv.NewPKI(t)
	a := testenv.StartMosquitto(t, pki, nil)
	b := testenv.StartMosquitto(t, pki, nil)
	cert, key := pki.Client(t, "d1")
	c, err := New(Options{Broker: a.URL(), Failover: []string{b.URL()}, CAFile: pki.CAFile, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	ua, ub := c.brokers[0], c.brokers[1]
	if ua.Hostname() != ub.Hostname() {
		t.Fatalf("brokers %s and %s: the test needs one host name", ua, ub)
	}
	renew := func() {
		certPEM, keyPEM, err := pki.CA.IssueClient("d1", nil)
		if err != nil {
			t.Fatal(err)
		}
		pair, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		c.SetCertificate(pair)
	}
	for _, step := range []struct {
		name    string
		before  func()
		to      *url.URL
		resumed bool
	}{
		{"first connection to A", nil, ua, false},
		{"reconnect to A", nil, ua, true},
		{"fail over to B", nil, ub, false},
		{"back to A", nil, ua, true},
		{"again to B", nil, ub, true},
		{"A after the certificate was renewed", renew, ua, false},
		{"A again with the new certificate", nil, ua, true},
		{"B after the renewal", nil, ub, false},
		{"A restarted", func() { a.Kill(); a.Start() }, ua, false},
		{"A again", nil, ua, true},
	} {
		if step.before != nil {
			step.before()
		}
		resumed, same := mqttHello(t, c, step.to)
		if resumed != step.resumed || same != step.resumed {
			t.Errorf("%s: resumed %v, same issuer %v; want %v", step.name, resumed, same, step.resumed)
		}
	}
}

// TestSessionKeptWhenUnanswered: a handshake the broker never answers (an
// overloaded broker dropping it, a network that holds it past the
// timeout) does not cost the client its session: the next connection
// resumes. crypto/tls alone forgets it.
func TestSessionKeptWhenUnanswered(t *testing.T) {
	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, nil)
	proxy, err := holdproxy.Listen("127.0.0.1:0", m.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	cert, key := pki.Client(t, "d1")
	c, err := New(Options{Broker: "mqtts://localhost:" + strconv.Itoa(proxy.Addr().(*net.TCPAddr).Port), CAFile: pki.CAFile, CertFile: cert, KeyFile: key})
	if err != nil {
		t.Fatal(err)
	}
	u := c.brokers[0]
	if resumed, _ := mqttHello(t, c, u); resumed {
		t.Fatal("first connection resumed")
	}
	proxy.Hold()
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	_, err = c.dial(ctx, u)
	cancel()
	if err == nil {
		t.Fatal("a handshake through a held proxy succeeded")
	}
	proxy.Release()
	if resumed, _ := mqttHello(t, c, u); !resumed {
		t.Errorf("after a handshake that timed out (%v): not resumed", err)
	}
}

// TestUnanswered: which handshake failures keep the session offered.
func TestUnanswered(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"closed", io.EOF, true},
		{"closed mid-record", fmt.Errorf("tls: %w", io.ErrUnexpectedEOF), true},
		{"timeout", fmt.Errorf("tls: %w", context.DeadlineExceeded), true},
		{"deadline", &net.OpError{Op: "read", Err: os.ErrDeadlineExceeded}, true},
		{"reset", &net.OpError{Op: "read", Err: syscall.ECONNRESET}, true},
		{"alert: bad certificate", &net.OpError{Op: "remote error", Err: tls.AlertError(42)}, false},
		{"alert: decrypt error", fmt.Errorf("tls: %w", tls.AlertError(51)), false},
		{"certificate refused here", &tls.CertificateVerificationError{Err: errors.New("x509: expired")}, false},
	} {
		if got := unanswered(tc.err); got != tc.want {
			t.Errorf("%s (%v): %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
