package localctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeAgent refuses a setpoint out of 5..35 and remembers what it applied.
type fakeAgent struct {
	mu  sync.Mutex
	set map[string]any
}

func (f *fakeAgent) Set(_ context.Context, ch map[string]any) error {
	for k, v := range ch {
		if k != "setpoint_c" {
			return fmt.Errorf("unknown property %q", k)
		}
		n, ok := v.(json.Number)
		if !ok {
			return fmt.Errorf("setpoint_c must be a number")
		}
		x, _ := n.Float64()
		if x < 5 || x > 35 {
			return fmt.Errorf("setpoint_c %v out of range 5.0 to 35.0", x)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.set = ch
	return nil
}

func (f *fakeAgent) Status(context.Context) (any, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return map[string]any{"set": f.set}, nil
}

func serve(t *testing.T) (string, *fakeAgent) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "ctl.sock")
	s, err := Listen(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	a := &fakeAgent{}
	go func() { done <- s.Serve(ctx, a) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
		if _, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("socket not removed at stop: %v", err)
		}
	})
	return path, a
}

func do(t *testing.T, path string, req Request) (Response, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return Do(ctx, path, req)
}

func TestRequests(t *testing.T) {
	path, agent := serve(t)
	tests := []struct {
		name    string
		req     Request
		wantErr string
	}{
		{"set", Request{Op: OpSet, Set: map[string]any{"setpoint_c": 22.5}}, ""},
		{"status", Request{Op: OpStatus}, ""},
		{"out of range", Request{Op: OpSet, Set: map[string]any{"setpoint_c": 50}}, "out of range"},
		{"unknown property", Request{Op: OpSet, Set: map[string]any{"colour": "red"}}, "unknown property"},
		{"nothing to set", Request{Op: OpSet}, "no property"},
		{"unknown op", Request{Op: "reboot"}, "unknown op"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, err := do(t, path, tc.req)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || resp.OK {
					t.Fatalf("got %+v, %v; want an error with %q", resp, err, tc.wantErr)
				}
				return
			}
			if err != nil || !resp.OK {
				t.Fatalf("got %+v, %v", resp, err)
			}
			var st map[string]map[string]float64
			if err := json.Unmarshal(resp.Status, &st); err != nil {
				t.Fatalf("status %s: %v", resp.Status, err)
			}
			if st["set"]["setpoint_c"] != 22.5 {
				t.Errorf("status %s, want the set setpoint 22.5", resp.Status)
			}
		})
	}
	agent.mu.Lock()
	defer agent.mu.Unlock()
	if agent.set["setpoint_c"].(json.Number).String() != "22.5" {
		t.Errorf("refused sets changed the agent: %v", agent.set)
	}
}

func TestMalformedRequests(t *testing.T) {
	path, _ := serve(t)
	for name, raw := range map[string]string{
		"not json":  "hello\n",
		"oversized": `{"op":"set","set":{"x":"` + strings.Repeat("a", MaxRequest) + `"}}`,
		"truncated": `{"op":"se`,
	} {
		t.Run(name, func(t *testing.T) {
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			if _, err := c.Write([]byte(raw)); err != nil {
				t.Fatal(err)
			}
			c.(*net.UnixConn).CloseWrite()
			var resp Response
			if err := json.NewDecoder(c).Decode(&resp); err != nil {
				t.Fatal(err)
			}
			if resp.OK || !strings.Contains(resp.Error, "bad request") {
				t.Fatalf("response %+v, want a bad request", resp)
			}
		})
	}
}

func TestSocketMode(t *testing.T) {
	path, _ := serve(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket mode %v, want a socket with 0660", fi.Mode())
	}
}

func TestListenRefusesALiveSocketAndReplacesAStaleOne(t *testing.T) {
	path, _ := serve(t)
	if _, err := Listen(path, nil); err == nil || !strings.Contains(err.Error(), "another thermostat agent") {
		t.Fatalf("Listen on a live socket = %v, want a refusal", err)
	}

	// A socket file whose process died: nothing accepts on it.
	stale := filepath.Join(t.TempDir(), "stale.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("stale socket file missing: %v", err)
	}
	s, err := Listen(stale, nil)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	s.Close()

	regular := filepath.Join(t.TempDir(), "file")
	os.WriteFile(regular, []byte("keep me"), 0o600)
	if _, err := Listen(regular, nil); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Listen over a regular file = %v, want a refusal", err)
	}
	if b, _ := os.ReadFile(regular); string(b) != "keep me" {
		t.Fatal("Listen clobbered a regular file")
	}
}

func TestDoWithoutAgent(t *testing.T) {
	_, err := do(t, filepath.Join(t.TempDir(), "none.sock"), Request{Op: OpStatus})
	if err == nil || !strings.Contains(err.Error(), "is `thermostat run` running") {
		t.Fatalf("Do = %v, want a hint that the agent is not running", err)
	}
}
