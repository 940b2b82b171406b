package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// recorder is a broker link that keeps what the fleet publishes.
type recorder struct {
	mu   sync.Mutex
	msgs map[string][]byte // topic -> last payload
}

func (r *recorder) Publish(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if qos != 1 || !retain {
		return errors.New("commands must be QoS 1 retained")
	}
	r.msgs[topic] = payload
	return nil
}

func (r *recorder) last(topic string) []byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.msgs[topic]
}

// newFleet runs a real fleet whose broker link is a recorder; ready says
// whether the link is up (and so the fleet ready).
func newFleet(t *testing.T, ready bool) (*fleet.Fleet, *recorder) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Options{Store: st, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; st.Close() })

	rec := &recorder{msgs: map[string][]byte{}}
	f.Receive("thermo/d1/event", []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":20,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}}`), true)
	f.Receive("thermo/d2/status", []byte(`{"v":1,"online":false}`), true)
	if ready {
		f.LinkUp(rec, true)
		select {
		case <-f.Ready():
		case <-time.After(10 * time.Second):
			t.Fatal("fleet not ready")
		}
	} else {
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		deadline := time.After(10 * time.Second)
		for len(f.Devices()) < 2 {
			select {
			case <-tick.C:
			case <-deadline:
				t.Fatal("messages not processed")
			}
		}
	}
	return f, rec
}

func do(t *testing.T, h http.Handler, method, path, body string, hdr ...string) (int, string) {
	t.Helper()
	req := httptest.NewRequest(method, path, strings.NewReader(body))
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, req)
	if ct := w.Header().Get("Content-Type"); ct != "application/json" && w.Code != 404 && w.Code != 405 {
		t.Errorf("%s %s: Content-Type %q", method, path, ct)
	}
	return w.Code, w.Body.String()
}

func TestAPI(t *testing.T) {
	f, rec := newFleet(t, true)
	h := NewHandler(f, Options{Logger: quiet})

	tests := []struct {
		name, method, path, body string
		code                     int
		want                     string // a substring of the answer
	}{
		{"list", "GET", "/api/devices", "", 200, `"id": "d2"`},
		{"get", "GET", "/api/devices/d1", "", 200, `"setpoint_c": {`},
		{"get unknown", "GET", "/api/devices/d9", "", 404, `unknown device \"d9\"`},
		{"get bad id", "GET", "/api/devices/D1", "", 404, "unknown device"},
		{"set", "PUT", "/api/devices/d1", `{"setpoint_c": 21.5, "mode": "cool"}`, 200, `"val": 21.5`},
		{"set rounds", "PUT", "/api/devices/d1", `{"setpoint_c": 21.54}`, 200, `"val": 21.5`},
		{"set offline device", "PUT", "/api/devices/d2", `{"mode": "off"}`, 200, `"mode": {`},
		{"unknown device", "PUT", "/api/devices/d9", `{"mode": "off"}`, 404, `unknown device`},
		{"bad JSON", "PUT", "/api/devices/d1", `{"mode": `, 400, "not a JSON object"},
		{"array", "PUT", "/api/devices/d1", `[1]`, 400, "not a JSON object"},
		{"null", "PUT", "/api/devices/d1", `null`, 400, "not a JSON object"},
		{"trailing data", "PUT", "/api/devices/d1", `{"mode":"off"} x`, 400, "data after"},
		{"empty", "PUT", "/api/devices/d1", `{}`, 400, "no property"},
		{"unknown property", "PUT", "/api/devices/d1", `{"fan": true}`, 400, `unknown property \"fan\"`},
		{"too high", "PUT", "/api/devices/d1", `{"setpoint_c": 35.5}`, 400, "out of range 5.0 to 35.0"},
		{"too low", "PUT", "/api/devices/d1", `{"setpoint_c": 4}`, 400, "out of range"},
		{"string number", "PUT", "/api/devices/d1", `{"setpoint_c": "21"}`, 400, "must be a number"},
		{"bad mode", "PUT", "/api/devices/d1", `{"mode": "hot"}`, 400, "is not one of"},
		{"one bad of two", "PUT", "/api/devices/d1", `{"mode": "off", "setpoint_c": 99}`, 400, "out of range"},
		{"oversized", "PUT", "/api/devices/d1", `{"mode": "` + strings.Repeat("x", maxBody) + `"}`, 400, "over 65536 bytes"},
		{"method", "POST", "/api/devices/d1", `{}`, 405, ""},
		{"other path", "GET", "/api/other", "", 404, "not found"},
		{"health", "GET", "/healthz", "", 200, `"ready": true`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before, _ := f.Device("d1")
			code, body := do(t, h, tc.method, tc.path, tc.body)
			if code != tc.code || !strings.Contains(body, tc.want) {
				t.Fatalf("%s %s: %d %s, want %d with %q", tc.method, tc.path, code, body, tc.code, tc.want)
			}
			if tc.method == "PUT" && code != 200 {
				if after, _ := f.Device("d1"); !reflect.DeepEqual(after, before) {
					t.Fatalf("a refused PUT changed d1: %+v, was %+v", after, before)
				}
			}
		})
	}

	// The set went out as a retained Command carrying the answer's clock.
	code, body := do(t, h, "GET", "/api/devices/d1", "")
	var d fleet.Device
	if err := json.Unmarshal([]byte(body), &d); code != 200 || err != nil {
		t.Fatal(code, body, err)
	}
	m, _, err := protocol.DecodeMessage(rec.last("thermo/d1/cmd"))
	if err != nil || m.VC != d.VC || !reflect.DeepEqual(m.Props, d.Props) {
		t.Fatalf("published %+v (%v), device %+v", m, err, d)
	}
}

// TestDeviceJSON: the device object has exactly the documented fields, in
// the wire's shapes.
func TestDeviceJSON(t *testing.T) {
	f, _ := newFleet(t, true)
	h := NewHandler(f, Options{Logger: quiet})
	_, body := do(t, h, "GET", "/api/devices", "")
	var devs []map[string]any
	if err := json.Unmarshal([]byte(body), &devs); err != nil || len(devs) != 2 {
		t.Fatalf("%s: %v", body, err)
	}
	d1 := devs[0]
	keys := []string{"alerts", "cert_expires", "id", "last_seen", "online", "pending", "props", "telemetry", "vc"}
	var got []string
	for k := range d1 {
		got = append(got, k)
	}
	if !reflect.DeepEqual(sortStrings(got), keys) {
		t.Fatalf("fields %v, want %v", got, keys)
	}
	if d1["id"] != "d1" || d1["telemetry"] != nil || d1["last_seen"] != nil || d1["online"] != false {
		t.Errorf("d1: %v", d1)
	}
	if vc, ok := d1["vc"].([]any); !ok || len(vc) != 2 || vc[0] != 1.0 || vc[1] != 1.0 {
		t.Errorf("vc %v", d1["vc"])
	}
	sp, ok := d1["props"].(map[string]any)["setpoint_c"].(map[string]any)
	if !ok || sp["val"] != 20.0 || !reflect.DeepEqual(sp["w"], []any{0.0, 1.0}) {
		t.Errorf("props %v", d1["props"])
	}
	if p := devs[1]["props"]; !reflect.DeepEqual(p, map[string]any{}) {
		t.Errorf("props of a device known by its status: %v, want {}", p)
	}
}

func sortStrings(s []string) []string {
	for i := range s {
		for j := i + 1; j < len(s); j++ {
			if s[j] < s[i] {
				s[i], s[j] = s[j], s[i]
			}
		}
	}
	return s
}

func TestNotReady(t *testing.T) {
	f, _ := newFleet(t, false)
	h := NewHandler(f, Options{Logger: quiet, SetTimeout: 50 * time.Millisecond})
	code, body := do(t, h, "PUT", "/api/devices/d1", `{"mode":"off"}`)
	if code != 503 || !strings.Contains(body, "retained") {
		t.Fatalf("PUT before ready: %d %s", code, body)
	}
	code, body = do(t, h, "GET", "/healthz", "")
	if code != 503 || !strings.Contains(body, `"ready": false`) {
		t.Fatalf("healthz before ready: %d %s", code, body)
	}
	// Reads work before ready.
	if code, _ := do(t, h, "GET", "/api/devices/d1", ""); code != 200 {
		t.Fatalf("GET before ready: %d", code)
	}
}

func TestToken(t *testing.T) {
	f, _ := newFleet(t, true)
	h := NewHandler(f, Options{Logger: quiet, Token: "s3cret-token"})
	tests := []struct {
		name, path, auth string
		code             int
	}{
		{"none", "/api/devices", "", 401},
		{"wrong", "/api/devices", "Bearer s3cret-tokeN", 401},
		{"prefix", "/api/devices", "Bearer s3cret", 401},
		{"longer", "/api/devices", "Bearer s3cret-token2", 401},
		{"basic", "/api/devices", "Basic s3cret-token", 401},
		{"bare", "/api/devices", "s3cret-token", 401},
		{"right", "/api/devices", "Bearer s3cret-token", 200},
		{"scheme case", "/api/devices/d1", "bearer s3cret-token", 200},
		{"health needs none", "/healthz", "", 200},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(t, h, "GET", tc.path, "", "Authorization", tc.auth)
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
		})
	}
	if code, _ := do(t, h, "PUT", "/api/devices/d1", `{"mode":"off"}`); code != 401 {
		t.Fatalf("PUT without token: %d", code)
	}
	if d, _ := f.Device("d1"); mode(d) != "heat" {
		t.Fatal("a PUT without token changed d1")
	}
}

func mode(d fleet.Device) string { m, _ := d.Props.Mode(); return m }

func TestListen(t *testing.T) {
	tests := []struct {
		addr, token string
		ok          bool
	}{
		{"127.0.0.1:0", "", true},
		{"localhost:0", "", true},
		{"127.0.0.1:0", "tok", true},
		{"0.0.0.0:0", "", false},
		{":0", "", false},
		{":0", "tok", true},
	}
	for _, tc := range tests {
		ln, err := Listen(tc.addr, tc.token)
		if tc.ok != (err == nil) {
			t.Errorf("Listen(%q, token %q): %v, want ok=%v", tc.addr, tc.token, err, tc.ok)
		}
		if err != nil && !strings.Contains(err.Error(), "--http-token-file") {
			t.Errorf("refusal does not say how to fix it: %v", err)
		}
		if ln != nil {
			ln.Close()
		}
	}
}

func TestReadTokenFile(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		content, want string
		ok            bool
	}{
		{"abc123\n", "abc123", true},
		{"  abc123  ", "abc123", true},
		{"", "", false},
		{"\n\n", "", false},
		{"two words", "", false},
	}
	for i, tc := range tests {
		p := filepath.Join(dir, "tok"+string(rune('a'+i)))
		if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := ReadTokenFile(p)
		if got != tc.want || tc.ok != (err == nil) {
			t.Errorf("ReadTokenFile(%q) = %q, %v", tc.content, got, err)
		}
	}
	if _, err := ReadTokenFile(filepath.Join(dir, "missing")); err == nil {
		t.Error("a missing token file was accepted")
	}
}

// TestClient: the Go client against the real handler over HTTP.
func TestClient(t *testing.T) {
	f, _ := newFleet(t, true)
	srv := httptest.NewServer(NewHandler(f, Options{Logger: quiet, Token: "tok"}))
	defer srv.Close()
	ctx := context.Background()

	c, err := NewClient(srv.URL, "tok")
	if err != nil {
		t.Fatal(err)
	}
	devs, err := c.Devices(ctx)
	if err != nil || len(devs) != 2 || !reflect.DeepEqual(devs, f.Devices()) {
		t.Fatalf("Devices: %+v, %v", devs, err)
	}
	d, err := c.Set(ctx, "d1", map[string]any{"setpoint_c": 22.5})
	if err != nil || d.VC != (protocol.Clock{2, 1}) {
		t.Fatalf("Set: %+v, %v", d, err)
	}
	if sp, _ := d.Props.Setpoint(); sp != 22.5 {
		t.Fatalf("setpoint %v", sp)
	}
	var apiErr *Error
	if _, err := c.Set(ctx, "d1", map[string]any{"setpoint_c": 50}); !errors.As(err, &apiErr) || apiErr.Status != 400 {
		t.Fatalf("invalid Set: %v", err)
	}
	if _, err := c.Device(ctx, "d9"); !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Fatalf("unknown Device: %v", err)
	}
	st, err := c.Health(ctx)
	if err != nil || !st.Ready || st.Devices != 2 {
		t.Fatalf("Health: %+v, %v", st, err)
	}

	noTok, _ := NewClient(srv.URL, "")
	if _, err := noTok.Devices(ctx); !errors.As(err, &apiErr) || apiErr.Status != 401 || !strings.Contains(err.Error(), "CONTROLLERLITE_TOKEN") {
		t.Fatalf("without token: %v", err)
	}

	// Nothing listening: a clear error.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	gone, _ := NewClient(addr, "")
	if _, err := gone.Devices(ctx); !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "controllerlite serve") {
		t.Fatalf("unreachable: %v", err)
	}
}

func TestBaseURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"", "http://127.0.0.1:8080"},
		{"127.0.0.1:9000", "http://127.0.0.1:9000"},
		{":9000", "http://127.0.0.1:9000"},
		{"0.0.0.0:9000", "http://127.0.0.1:9000"},
		{"[::]:9000", "http://127.0.0.1:9000"},
		{"[::1]:9000", "http://[::1]:9000"},
		{"ctl.lan:9000", "http://ctl.lan:9000"},
		{"https://ctl.lan/", "https://ctl.lan"},
		{"http://ctl.lan:9000/prefix", "http://ctl.lan:9000/prefix"},
		{"ctl.lan", "error"},
		{"ftp://x", "error"},
	}
	for _, tc := range tests {
		u, err := BaseURL(tc.in)
		got := "error"
		if err == nil {
			got = u.String()
		}
		if got != tc.want {
			t.Errorf("BaseURL(%q) = %s (%v), want %s", tc.in, got, err, tc.want)
		}
	}
}
