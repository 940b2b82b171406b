package testenv_test

import (
	"net"
	"strconv"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
)

func TestFreePort(t *testing.T) {
	p := testenv.FreePort(t)
	l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
	if err != nil {
		t.Fatalf("port %d not free: %v", p, err)
	}
	l.Close()
}

// TestMosquittoStopCont freezes the broker: a TLS handshake gets no answer
// while it is stopped and completes once it continues.
func TestMosquittoStopCont(t *testing.T) {
	pki := testenv.NewPKI(t)
	mq := testenv.StartMosquitto(t, pki, nil)
	if !mq.Running() {
		t.Fatal("not running after start")
	}
	mq.Stop()
	conn, err := net.DialTimeout("tcp", mq.Addr(), time.Second) // the kernel still accepts
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	conn.Write([]byte{0x16, 0x03, 0x01, 0x00, 0x05, 1, 0, 0, 1, 0}) // a (bogus) TLS record
	if _, err := conn.Read(make([]byte, 1)); err == nil {
		t.Error("a stopped broker answered")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Errorf("read from a stopped broker: %v, want a timeout", err)
	}
	conn.Close()
	mq.Cont()
	pki.Connect(t, mq.URL(), "d1").Close()
	mq.Kill()
	if mq.Running() {
		t.Error("running after Kill")
	}
}
