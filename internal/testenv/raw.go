package testenv

import (
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Raw MQTT over TLS, written byte by byte, for tests of what a broker does
// with what no well-behaved client sends: a fixed header announcing a huge
// packet, a connection that never sends CONNECT, an oversize PUBLISH.

// OversizeHeader is a CONNECT fixed header announcing the largest length
// MQTT can express, 268,435,455 bytes, with no packet after it.
var OversizeHeader = []byte{0x10, 0xff, 0xff, 0xff, 0x7f}

// DialTCP opens a plain TCP connection to addr, closed when the test ends.
func DialTCP(t testing.TB, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, WaitTimeout)
	if err != nil {
		t.Fatalf("testenv: dial %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// DialRawTLS opens a TCP connection to addr and completes a TLS handshake
// presenting the client certificate certFile/keyFile (trusting the fleet CA
// for the server, as "localhost"). Nothing MQTT is sent.
func (p *PKI) DialRawTLS(t testing.TB, addr, certFile, keyFile string) *tls.Conn {
	t.Helper()
	tc := tls.Client(DialTCP(t, addr), p.ClientTLS(t, certFile, keyFile))
	if err := tc.SetDeadline(time.Now().Add(WaitTimeout)); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if err := tc.Handshake(); err != nil {
		t.Fatalf("testenv: TLS handshake with %s: %v", addr, err)
	}
	if err := tc.SetDeadline(time.Time{}); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return tc
}

// RawConnect sends an MQTT 3.1.1 CONNECT as clientID (clean session,
// keep-alive 30 s) on c and waits for the CONNACK; it fails the test
// unless the broker accepts.
func RawConnect(t testing.TB, c net.Conn, clientID string) {
	t.Helper()
	var body []byte
	body = appendString(body, "MQTT")
	body = append(body, 4, 0x02, 0, 30) // level 3.1.1, clean session, keep-alive 30 s
	body = appendString(body, clientID)
	RawWrite(t, c, Packet(0x10, body))
	ack := make([]byte, 4)
	if err := c.SetReadDeadline(time.Now().Add(WaitTimeout)); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if _, err := io.ReadFull(c, ack); err != nil {
		t.Fatalf("testenv: read CONNACK: %v", err)
	}
	if err := c.SetReadDeadline(time.Time{}); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	if ack[0] != 0x20 || ack[1] != 2 || ack[3] != 0 {
		t.Fatalf("testenv: CONNACK % x: connection refused", ack)
	}
}

// PublishPacket is an MQTT 3.1.1 PUBLISH (packet id 1 for QoS above 0).
func PublishPacket(topic string, payload []byte, qos byte, retain bool) []byte {
	first := 0x30 | qos<<1
	if retain {
		first |= 1
	}
	body := appendString(nil, topic)
	if qos > 0 {
		body = append(body, 0, 1)
	}
	return Packet(first, append(body, payload...))
}

// Packet is an MQTT packet: the first byte, the remaining length, body.
func Packet(first byte, body []byte) []byte {
	return append(Header(first, len(body)), body...)
}

// Header is a fixed header announcing a body of n bytes.
func Header(first byte, n int) []byte {
	h := []byte{first}
	for {
		b := byte(n % 128)
		n /= 128
		if n > 0 {
			b |= 0x80
		}
		h = append(h, b)
		if n == 0 {
			return h
		}
	}
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// RawWrite writes b to c, failing the test on error.
func RawWrite(t testing.TB, c net.Conn, b []byte) {
	t.Helper()
	if err := RawWriteErr(c, b); err != nil {
		t.Fatalf("testenv: %v", err)
	}
}

// RawWriteErr writes b to c. A broker that refuses what it has read so far
// may close the connection (a reset) while the rest is being written.
func RawWriteErr(c net.Conn, b []byte) error {
	if err := c.SetWriteDeadline(time.Now().Add(WaitTimeout)); err != nil {
		return err
	}
	if _, err := c.Write(b); err != nil {
		return fmt.Errorf("write %d bytes: %w", len(b), err)
	}
	return nil
}

// WaitClosed reads (and discards) what c receives until the peer closes
// the connection or within passes. It reports whether the peer closed it
// and how long that took.
func WaitClosed(c net.Conn, within time.Duration) (closed bool, after time.Duration) {
	start := time.Now()
	if err := c.SetReadDeadline(start.Add(within)); err != nil {
		return true, time.Since(start) // already closed
	}
	buf := make([]byte, 4096)
	for {
		_, err := c.Read(buf)
		if err == nil {
			continue
		}
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return false, time.Since(start)
		}
		return true, time.Since(start)
	}
}

// RawPing sends PINGREQ and waits for PINGRESP: the connection is alive.
func RawPing(c net.Conn) error {
	if _, err := c.Write([]byte{0xc0, 0}); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if err := c.SetReadDeadline(time.Now().Add(WaitTimeout)); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	resp := make([]byte, 2)
	if _, err := io.ReadFull(c, resp); err != nil {
		return fmt.Errorf("ping: %w", err)
	}
	if resp[0] != 0xd0 || resp[1] != 0 {
		return fmt.Errorf("ping: got % x, want PINGRESP", resp)
	}
	return nil
}

// ProcessMemory reads a process's virtual size and resident set, in bytes,
// from /proc/PID/status: what another process (a broker) has reserved and
// touched. A huge allocation shows in the virtual size even before its
// pages are touched.
func ProcessMemory(pid int) (virtual, resident uint64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("process memory: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmSize" && key != "VmRSS") {
			continue
		}
		kb, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(val), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("process memory: %s: %w", line, err)
		}
		if key == "VmSize" {
			virtual = kb << 10
		} else {
			resident = kb << 10
		}
	}
	if virtual == 0 {
		return 0, 0, fmt.Errorf("process memory: no VmSize in /proc/%d/status", pid)
	}
	return virtual, resident, nil
}
