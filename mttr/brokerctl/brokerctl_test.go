package brokerctl

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/provisioning"
)

// needMosquitto skips only where Mosquitto is truly absent.
func needMosquitto(t *testing.T) {
	t.Helper()
	if _, err := os.Stat(MosquittoBinary); errors.Is(err, os.ErrNotExist) {
		t.Skipf("%s not installed (apt-get install mosquitto)", MosquittoBinary)
	}
}

func startMosquitto(t *testing.T, pki *testenv.PKI, host string, ns *NetNS, certFile, keyFile string) *Process {
	t.Helper()
	port := 8883
	if ns == nil {
		var err error
		if port, err = FreePort(host); err != nil {
			t.Fatal(err)
		}
	}
	b, err := Mosquitto(Options{Dir: t.TempDir(), Host: host, Port: port, CAFile: pki.CAFile, CertFile: certFile, KeyFile: keyFile, NetNS: ns})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	before := time.Now()
	up, err := b.Start(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if up.Before(before) || time.Since(up) < 0 {
		t.Fatalf("up time %v not within the start", up)
	}
	return b
}

// roundTrip proves the broker serves MQTT over mutual TLS: a retained
// message published by one client reaches another.
func roundTrip(t *testing.T, pki *testenv.PKI, url, payload string) {
	t.Helper()
	c := pki.Connect(t, url, "controller")
	defer c.Close()
	c.Publish(t, "thermo/d1/cmd", 1, true, []byte(payload))
	c.Subscribe(t, "thermo/d1/cmd", 1)
	c.WaitPayload(t, "thermo/d1/cmd", payload)
}

// handshake tries a TLS handshake with a deadline.
func handshake(pki *testenv.PKI, addr, serverName string, d time.Duration) error {
	conf, err := provisioning.LoadClientTLS(pki.CAFile, pki.ServerCert, pki.ServerKey)
	if err != nil {
		return err
	}
	conf.ServerName = serverName
	dl := net.Dialer{Timeout: d}
	c, err := tls.DialWithDialer(&dl, "tcp", addr, conf)
	if err != nil {
		return err
	}
	return c.Close()
}

func TestMosquittoKillHangRestart(t *testing.T) {
	needMosquitto(t)
	pki := testenv.NewPKI(t)
	b := startMosquitto(t, pki, "127.0.0.1", nil, pki.ServerCert, pki.ServerKey)
	_, port, _ := net.SplitHostPort(b.Addr())
	url := "mqtts://localhost:" + port
	roundTrip(t, pki, url, "first")

	// Hang: the kernel still completes TCP connects, but nothing answers
	// a TLS handshake; after Resume it does.
	ctx := context.Background()
	if err := b.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	err := handshake(pki, b.Addr(), "localhost", 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("handshake with a hung broker: %v, want a timeout", err)
	}
	if err := b.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, pki, url, "after hang")

	// Kill: the port refuses at once, and Start brings it back on the
	// same port, in memory (the retained message is gone).
	pid := b.PID()
	if err := b.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if b.PID() != 0 {
		t.Fatal("still a pid after Kill")
	}
	if err := syscallAlive(pid); err == nil {
		t.Fatalf("process %d still alive after Kill", pid)
	}
	if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("a killed broker accepted a connection")
	}
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := b.Start(sctx); err != nil {
		t.Fatal(err)
	}
	c := pki.Connect(t, url, "controller")
	defer c.Close()
	c.Subscribe(t, "thermo/d1/cmd", 1)
	c.Publish(t, "thermo/d1/cmd", 1, false, []byte("marker"))
	_, msgs := c.WaitPayload(t, "thermo/d1/cmd", "marker")
	for _, m := range msgs {
		if string(m.Payload) != "marker" {
			t.Fatalf("retained message survived a kill without persistence: %q", m.Payload)
		}
	}
	if _, err := b.Start(ctx); err == nil {
		t.Fatal("started twice")
	}
}

func syscallAlive(pid int) error {
	p, err := os.FindProcess(pid)
	if err != nil {
		return err
	}
	return p.Signal(syscallZero)
}

func TestStartFailureReportsLog(t *testing.T) {
	port, err := FreePort("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	b := &Process{Kind: "broken", Argv: []string{"sh", "-c", "echo cannot load the key >&2; exit 1"},
		Address: fmt.Sprintf("127.0.0.1:%d", port), LogFile: filepath.Join(dir, "broken.log")}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = b.Start(ctx)
	if err == nil || !strings.Contains(err.Error(), "exited before accepting") || !strings.Contains(err.Error(), "cannot load the key") {
		t.Fatalf("got %v, want an early exit with the log's tail", err)
	}
	if b.PID() != 0 {
		t.Fatal("a dead broker has a pid")
	}
}

func TestOptionsRequired(t *testing.T) {
	cases := []Options{
		{},
		{Dir: t.TempDir(), Host: "127.0.0.1", Port: 1, CAFile: "a", CertFile: "b"},
		{Dir: t.TempDir(), Host: "", Port: 1, CAFile: "a", CertFile: "b", KeyFile: "c"},
	}
	for i, o := range cases {
		if _, err := Mosquitto(o); err == nil {
			t.Errorf("case %d: no error for %+v", i, o)
		}
		if _, err := Embedded([]string{"x"}, "127.0.0.1:1", "tok", o); err == nil {
			t.Errorf("case %d: embedded: no error", i)
		}
	}
	ok := Options{Dir: t.TempDir(), Host: "127.0.0.1", Port: 1, CAFile: "a", CertFile: "b", KeyFile: "c"}
	if _, err := Embedded(nil, "127.0.0.1:1", "tok", ok); err == nil {
		t.Error("embedded without a command")
	}
	if _, err := Aedes(t.TempDir(), ok); err == nil || !strings.Contains(err.Error(), "server.js") {
		t.Errorf("aedes without server.js: %v", err)
	}
	e, err := Embedded([]string{"controllerlite", "serve"}, "127.0.0.1:9", "/t/token", ok)
	if err != nil {
		t.Fatal(err)
	}
	got := strings.Join(e.Argv, " ")
	for _, want := range []string{"controllerlite serve --listen 127.0.0.1:1", "--http 127.0.0.1:9 --http-token-file /t/token", "--data-dir " + filepath.Join(ok.Dir, "data")} {
		if !strings.Contains(got, want) {
			t.Errorf("argv %q lacks %q", got, want)
		}
	}
}

func TestExternal(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dir := t.TempDir()
	journal := filepath.Join(dir, "journal")
	var out strings.Builder
	e := &External{Address: ln.Addr().String(),
		DownCmd: fmt.Sprintf("echo down >> %s", journal), UpCmd: fmt.Sprintf("echo up >> %s; echo started", journal),
		PauseCmd: "exit 3", Log: &out}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.Start(ctx); err != nil { // the first start only waits
		t.Fatal(err)
	}
	if err := e.Kill(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(journal)
	if string(b) != "down\nup\n" || !strings.Contains(out.String(), "started") {
		t.Fatalf("journal %q, output %q", b, out.String())
	}
	if err := e.Pause(ctx); err == nil || !strings.Contains(err.Error(), "exit status 3") {
		t.Fatalf("failing pause command: %v", err)
	}
	if err := e.Resume(ctx); err == nil || !strings.Contains(err.Error(), "no resume command") {
		t.Fatalf("missing resume command: %v", err)
	}
}

// TestPartition runs Mosquitto in a network namespace and cuts its link:
// connections go unanswered (no refusal, no reset) until it is healed.
func TestPartition(t *testing.T) {
	needMosquitto(t)
	if err := NetNSAvailable(); err != nil {
		t.Skipf("partition: %v", err)
	}
	index := 200 + os.Getpid()%50
	ns, err := NewNetNS(fmt.Sprintf("mttr-test-%d", os.Getpid()), index)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	pki := testenv.NewPKI(t)
	certPEM, keyPEM, err := pki.CA.IssueServer([]string{"localhost", ns.BrokerIP}, nil)
	if err != nil {
		t.Fatal(err)
	}
	cert, key := filepath.Join(t.TempDir(), "server.crt"), filepath.Join(t.TempDir(), "server.key")
	if err := provisioning.WriteCertKey(cert, key, certPEM, keyPEM); err != nil {
		t.Fatal(err)
	}
	b := startMosquitto(t, pki, ns.BrokerIP, ns, cert, key)
	url := "mqtts://" + b.Addr()
	roundTrip(t, pki, url, "before")

	held, err := net.DialTimeout("tcp", b.Addr(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := ns.Cut(); err != nil {
		t.Fatal(err)
	}
	// A new connection is neither accepted nor refused.
	_, err = net.DialTimeout("tcp", b.Addr(), 300*time.Millisecond)
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("dial across a partition: %v, want a timeout", err)
	}
	// An established one can still write (into the void) and reads nothing.
	if _, err := held.Write([]byte{0xC0, 0x00}); err != nil {
		t.Fatalf("write across a partition failed at once: %v", err)
	}
	held.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if _, err := held.Read(make([]byte, 1)); !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("read across a partition: %v, want a timeout", err)
	}
	if err := ns.Heal(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := WaitAccepting(ctx, b.Addr(), nil); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, pki, url, "after")
}
