package transport

import (
	"context"
	"crypto/tls"
	"io"
	"net/url"
	"testing"
	"time"

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
