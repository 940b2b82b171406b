package broker

import (
	"bytes"
	"crypto/tls"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// allocSlack bounds what the broker (and the test) may allocate while one
// attack is handled: far below the 256 MiB one oversize header made mochi
// allocate without a packet size limit.
const allocSlack = 32 << 20

// totalAlloc is the bytes allocated by the process so far.
func totalAlloc() uint64 {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.TotalAlloc
}

// TestOversizePacketsRefused: a packet announced over protocol.MaxPacketSize
// closes the connection as soon as its fixed header is read, before CONNECT
// or after it, without the broker allocating the announced size, and nothing
// of it is delivered or retained. The connect timeout is long here, so a
// prompt close can only come from the size check.
func TestOversizePacketsRefused(t *testing.T) {
	pki := testenv.NewPKI(t)
	tb := startBrokerWith(t, pki, Options{ConnectTimeout: time.Minute}, nil)
	addr := tb.Addr().String()
	cert, key := pki.Client(t, "d1")

	// A retained event the attacks below must not replace.
	d1 := pki.Connect(t, tb.url, "d1")
	d1.Publish(t, "thermo/d1/event", 1, true, []byte("marker"))
	inline := subscribe(t, tb.Broker, "thermo/#")
	inline.waitFor(t, "thermo/d1/event", "marker")
	d1.Close()

	big := bytes.Repeat([]byte("x"), 100_000)
	tests := []struct {
		name    string
		connect bool   // send CONNECT as d1 first
		send    []byte // then this
	}{
		{"5-byte header before CONNECT", false, testenv.OversizeHeader},
		{"CONNECT announcing MaxPacketSize bytes", false, testenv.Header(0x10, protocol.MaxPacketSize)},
		{"PUBLISH header announcing 256 MiB", true, testenv.Header(0x31, 268_435_455)},
		{"retained PUBLISH of 100 KB", true, testenv.PublishPacket("thermo/d1/event", big, 1, true)},
		{"PUBLISH of 100 KB", true, testenv.PublishPacket("thermo/d1/telemetry", big, 0, false)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runtime.GC()
			before := totalAlloc()
			c := pki.DialRawTLS(t, addr, cert, key)
			if tc.connect {
				testenv.RawConnect(t, c, "d1")
			}
			closed, after := true, time.Duration(0)
			if err := testenv.RawWriteErr(c, tc.send); err != nil {
				t.Logf("closed while the packet was sent: %v", err)
			} else {
				closed, after = testenv.WaitClosed(c, waitTimeout)
			}
			if !closed {
				t.Errorf("connection still open %v after the oversize packet", after)
			} else {
				t.Logf("closed after %v", after)
			}
			grew := totalAlloc() - before
			t.Logf("allocated %d KiB meanwhile", grew>>10)
			if grew > allocSlack {
				t.Errorf("the process allocated %d MiB handling it", grew>>20)
			}
			tb.log.waitFor(t, "packet over the size limit")
		})
	}
	// Nothing oversize was delivered or retained: the marker stands.
	for _, m := range inline.all() {
		if len(m.payload) > protocol.MaxPayload {
			t.Errorf("delivered: %d bytes on %s", len(m.payload), m.topic)
		}
	}
	late := subscribe(t, tb.Broker, "thermo/#")
	if got := late.all(); len(got) != 1 || got[0].payload != "marker" {
		t.Errorf("retained after the attacks: %d messages, want only the marker", len(got))
	}

	// The limit leaves room for the contract's largest message: a payload
	// of MaxPayload bytes goes through and is retained.
	c := pki.DialRawTLS(t, addr, cert, key)
	testenv.RawConnect(t, c, "d1")
	full := bytes.Repeat([]byte("f"), protocol.MaxPayload)
	testenv.RawWrite(t, c, testenv.PublishPacket("thermo/d1/event", full, 1, true))
	inline.waitFor(t, "thermo/d1/event", string(full))
}

// TestConnectTimeout: a connection that has not sent a whole CONNECT when
// the connect timeout passes since it was accepted is closed, whether it
// stopped before, inside or after the TLS handshake; a client that sent
// CONNECT stays connected past it.
func TestConnectTimeout(t *testing.T) {
	const timeout = 300 * time.Millisecond
	pki := testenv.NewPKI(t)
	tb := startBrokerWith(t, pki, Options{ConnectTimeout: timeout}, nil)
	addr := tb.Addr().String()
	cert, key := pki.Client(t, "d1")

	tests := []struct {
		name   string
		open   func(t *testing.T) net.Conn
		logged string
	}{
		{"TCP, nothing sent", func(t *testing.T) net.Conn {
			return testenv.DialTCP(t, addr)
		}, "TLS handshake failed"},
		{"TCP, part of a ClientHello", func(t *testing.T) net.Conn {
			c := testenv.DialTCP(t, addr)
			testenv.RawWrite(t, c, []byte{0x16, 0x03, 0x01, 0x02})
			return c
		}, "TLS handshake failed"},
		{"TLS, nothing sent", func(t *testing.T) net.Conn {
			return pki.DialRawTLS(t, addr, cert, key)
		}, "no CONNECT within the connect timeout"},
		{"TLS, one byte of CONNECT", func(t *testing.T) net.Conn {
			c := pki.DialRawTLS(t, addr, cert, key)
			testenv.RawWrite(t, c, []byte{0x10})
			return c
		}, "no CONNECT within the connect timeout"},
		{"TLS, part of a CONNECT", func(t *testing.T) net.Conn {
			c := pki.DialRawTLS(t, addr, cert, key)
			testenv.RawWrite(t, c, append(testenv.Header(0x10, 20), 0, 4, 'M'))
			return c
		}, "no CONNECT within the connect timeout"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := time.Now()
			c := tc.open(t)
			closed, _ := testenv.WaitClosed(c, waitTimeout)
			after := time.Since(start)
			if !closed {
				t.Fatalf("connection still open after %v", after)
			}
			if after < timeout*9/10 {
				t.Errorf("closed after %v, before the %v timeout", after, timeout)
			}
			tb.log.waitFor(t, tc.logged)
		})
	}

	t.Run("CONNECT sent in time", func(t *testing.T) {
		c := pki.DialRawTLS(t, addr, cert, key)
		testenv.RawConnect(t, c, "d1")
		// Well past the connect timeout, the connection is still open:
		// the client's keep-alive (30 s) rules it now.
		if closed, after := testenv.WaitClosed(c, 3*timeout); closed {
			t.Fatalf("a connected client was closed after %v", after)
		}
		if err := testenv.RawPing(c); err != nil {
			t.Fatal(err)
		}
	})
}

// TestConnectTimeoutDefault: 10 s unless set, and never negative.
func TestConnectTimeoutDefault(t *testing.T) {
	pki := testenv.NewPKI(t)
	o := Options{CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey}
	b, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	if b.opts.ConnectTimeout != 10*time.Second || DefaultConnectTimeout != 10*time.Second {
		t.Errorf("connect timeout %v, want 10 s", b.opts.ConnectTimeout)
	}
	o.ConnectTimeout = -time.Second
	if _, err := New(o); err == nil || !strings.Contains(err.Error(), "negative") {
		t.Errorf("New with a negative connect timeout: %v", err)
	}
	if caps := capabilities(t); caps.MaximumPacketSize != protocol.MaxPacketSize {
		t.Errorf("mochi's MaximumPacketSize %d, want %d", caps.MaximumPacketSize, protocol.MaxPacketSize)
	}
}

// TestAdmission: with every handshake slot taken, a connection waits for
// its turn; its connect timeout starts when it gets a slot, so a client
// queued longer than the connect timeout still connects (before, its
// deadline was spent in the queue and it was dropped); one still waiting
// at the admit timeout is closed, and the log says why.
func TestAdmission(t *testing.T) {
	// Long against the time dialling a batch of silent connections takes
	// under load (-race, a busy CI machine: a few hundred ms), which comes
	// off the client's wait: with 500 ms it once connected after 464 ms.
	const connectTimeout = 1500 * time.Millisecond
	tests := []struct {
		name     string
		admit    time.Duration
		connects bool
	}{
		{"queued past the connect timeout, within the admit timeout", 10 * time.Second, true},
		{"still queued at the admit timeout", 200 * time.Millisecond, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pki := testenv.NewPKI(t)
			tb := startBrokerWith(t, pki, Options{ConnectTimeout: connectTimeout, AdmitTimeout: tc.admit}, nil)
			addr := tb.Addr().String()
			// Silent TCP connections take every slot, each until its
			// connect timeout ends its handshake; as many again queue
			// behind them and take the slots next, so the client queued
			// after them waits about two connect timeouts.
			for range maxHandshakes() {
				testenv.DialTCP(t, addr)
			}
			testenv.WaitFor(t, "every slot taken", func() bool { return len(tb.ln.slots) == cap(tb.ln.slots) })
			for range maxHandshakes() {
				testenv.DialTCP(t, addr)
			}
			cert, key := pki.Client(t, "d1")
			start := time.Now()
			c := tls.Client(testenv.DialTCP(t, addr), pki.ClientTLS(t, cert, key))
			if err := c.SetDeadline(start.Add(4 * connectTimeout)); err != nil {
				t.Fatal(err)
			}
			err := c.Handshake()
			waited := time.Since(start)
			c.SetDeadline(time.Time{})
			switch {
			case tc.connects && err != nil:
				t.Fatalf("handshake after waiting %v: %v", waited, err)
			case tc.connects:
				defer c.Close()
				testenv.RawConnect(t, c, "d1")
				if err := testenv.RawPing(c); err != nil {
					t.Fatal(err)
				}
				if waited <= connectTimeout {
					t.Errorf("connected after %v: it did not wait past the %v connect timeout", waited, connectTimeout)
				}
			case err == nil:
				c.Close()
				t.Fatalf("handshake done after %v: want the connection closed while still queued", waited)
			default:
				tb.log.waitFor(t, "no handshake slot within the admit timeout")
			}
		})
	}
}
