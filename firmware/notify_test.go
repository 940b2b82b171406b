package main

import (
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
)

// TestSystemdNotify: started by systemd (Type=notify), the thermostat says
// READY=1 once its control loop has the outputs in a known state, pings
// the watchdog while healthy, and says STOPPING=1 on SIGTERM. It needs no
// broker for that: the broker here is unreachable.
func TestSystemdNotify(t *testing.T) {
	pki := testenv.NewPKI(t)
	d := newDevice(t, pki, "mqtts://localhost:1", "n1")
	sock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	p := startEnv(t, []string{"NOTIFY_SOCKET=" + sock, "WATCHDOG_USEC=400000"}, d.args()...)

	var got []string
	want := []string{"READY=1", "WATCHDOG=1", "WATCHDOG=1"}
	buf := make([]byte, 4096)
	for len(want) > 0 {
		conn.SetReadDeadline(time.Now().Add(testenv.WaitTimeout))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("waiting for %s: %v (got %q)", want[0], err, got)
		}
		msg := string(buf[:n])
		got = append(got, msg)
		if strings.Contains(msg, want[0]) {
			want = want[1:]
		}
	}
	if err := p.term(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}
	for {
		conn.SetReadDeadline(time.Now().Add(testenv.WaitTimeout))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no STOPPING=1: %v (got %q)", err, got)
		}
		if strings.Contains(string(buf[:n]), "STOPPING=1") {
			break
		}
	}
}
