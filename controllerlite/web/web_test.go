package web_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/server"
	"github.com/thermofleet/thermo/controllerlite/web"
	"github.com/thermofleet/thermo/internal/testenv"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// controller starts a real controller (embedded broker, fleet, API and
// dashboard on one listener) and connects device d1 to it.
func controller(t *testing.T, token string) (*server.Server, *testenv.Client) {
	t.Helper()
	pki := testenv.NewPKI(t)
	s, err := server.Start(context.Background(), server.Config{
		CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		DataDir: t.TempDir(), HTTPAddr: "127.0.0.1:0", HTTPToken: token, Listen: "127.0.0.1:0", Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	<-s.Fleet().Ready()
	_, port, _ := net.SplitHostPort(s.BrokerAddr().String())
	dev := pki.Connect(t, "mqtts://localhost:"+port, "d1")
	dev.Publish(t, "thermo/d1/status", 1, true, []byte(`{"v":1,"online":true}`))
	event(t, dev, 1, 20)
	testenv.WaitFor(t, "d1 known and online", func() bool { d, ok := s.Fleet().Device("d1"); return ok && d.Online })
	return s, dev
}

// event publishes d1's state as the device would.
func event(t *testing.T, dev *testenv.Client, n int, sp float64) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"v": 1, "vc": []int{0, n}, "src": "button",
		"props": map[string]any{"setpoint_c": map[string]any{"val": sp, "w": []int{0, n}}}})
	dev.Publish(t, "thermo/d1/event", 1, true, b)
}

// noRedirect is a client that shows redirects instead of following them.
var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func do(t *testing.T, method, u string, body io.Reader, hdr map[string]string) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
		}
		req.Header.Set(k, v)
	}
	res, err := noRedirect.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res
}

// Without a token the pages open directly, and only to loopback names.
func TestPagesWithoutToken(t *testing.T) {
	s, _ := controller(t, "")
	base := "http://" + s.HTTPAddr().String()
	for _, c := range []struct {
		method, path string
		hdr          map[string]string
		want         int
		body         string
	}{
		{"GET", "/", nil, 200, `src="/static/js/fleet.js"`},
		{"GET", "/devices/d1", nil, 200, `src="/static/js/device.js"`},
		{"GET", "/login", nil, 303, ""},
		{"GET", "/static/js/common.js", nil, 200, "export function"},
		{"GET", "/static/vendor/uplot/uPlot.iife.min.js", nil, 200, "uPlot"},
		{"GET", "/api/devices/d1", nil, 200, `"id": "d1"`},
		{"GET", "/healthz", nil, 200, `"ready": true`},
		{"GET", "/nothing", nil, 404, ""},
		// DNS rebinding: a page of evil.example whose name now points here.
		{"GET", "/api/devices", map[string]string{"Host": "evil.example:8080"}, 421, "not a loopback name"},
		{"GET", "/", map[string]string{"Host": "localhost"}, 200, ""},
	} {
		res := do(t, c.method, base+c.path, nil, c.hdr)
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != c.want || !strings.Contains(string(b), c.body) {
			t.Errorf("%s %s %v: %s %.200q, want %d with %q", c.method, c.path, c.hdr, res.Status, b, c.want, c.body)
		}
		if res.Header.Get("Content-Security-Policy") == "" || res.Header.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s %s: no security headers: %v", c.method, c.path, res.Header)
		}
	}
}

// Static files carry an ETag, so a browser revalidates instead of
// fetching them again.
func TestStaticETag(t *testing.T) {
	d := web.New(nil, web.Options{Logger: quiet})
	srv := httptest.NewServer(d.Handler(http.NotFoundHandler()))
	defer srv.Close()
	u := srv.URL + "/static/vendor/uplot/uPlot.iife.min.js"
	res := do(t, "GET", u, nil, nil)
	tag := res.Header.Get("ETag")
	if res.StatusCode != 200 || tag == "" || res.Header.Get("Cache-Control") != "no-cache" {
		t.Fatalf("GET %s: %s ETag %q Cache-Control %q", u, res.Status, tag, res.Header.Get("Cache-Control"))
	}
	if res := do(t, "GET", u, nil, map[string]string{"If-None-Match": tag}); res.StatusCode != http.StatusNotModified {
		t.Errorf("with If-None-Match: %s, want 304", res.Status)
	}
	if res := do(t, "GET", srv.URL+"/static/app.css", nil, map[string]string{"If-None-Match": tag}); res.StatusCode != 200 {
		t.Errorf("another file with the first's tag: %s, want 200", res.Status)
	}
}

// Cross-site state changes are refused before they reach the API; safe
// methods, same-origin requests and clients that are no browser pass.
func TestCrossOrigin(t *testing.T) {
	s, _ := controller(t, "")
	base := "http://" + s.HTTPAddr().String()
	body := `{"setpoint_c": 22}`
	for _, c := range []struct {
		name   string
		method string
		hdr    map[string]string
		want   int
	}{
		{"curl (no browser headers)", "PUT", nil, 200},
		{"same-origin page", "PUT", map[string]string{"Sec-Fetch-Site": "same-origin", "Origin": base}, 200},
		{"another site's page", "PUT", map[string]string{"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"}, 403},
		{"another port of this host", "PUT", map[string]string{"Sec-Fetch-Site": "same-site", "Origin": "http://127.0.0.1:1"}, 403},
		{"an old browser from elsewhere", "PUT", map[string]string{"Origin": "http://evil.example"}, 403},
		{"a cross-site read", "GET", map[string]string{"Sec-Fetch-Site": "cross-site"}, 200},
	} {
		res := do(t, c.method, base+"/api/devices/d1", strings.NewReader(body), c.hdr)
		if res.StatusCode != c.want {
			b, _ := io.ReadAll(res.Body)
			t.Errorf("%s: %s %s, want %d", c.name, res.Status, b, c.want)
		}
	}
	if sp := s.Fleet().Devices()[0].Props["setpoint_c"].Val; sp != 22.0 {
		t.Errorf("setpoint %v after the refused writes, want the accepted 22", sp)
	}
	res := do(t, "POST", base+"/login", strings.NewReader("token=x"), map[string]string{
		"Content-Type": "application/x-www-form-urlencoded", "Sec-Fetch-Site": "cross-site"})
	if res.StatusCode != 403 {
		t.Errorf("cross-site login: %s, want 403", res.Status)
	}
}

// With a token: the pages send the browser to the login; the token gives
// a session cookie the API accepts in place of the bearer; logout ends it.
func TestLogin(t *testing.T) {
	const token = "the-token"
	s, _ := controller(t, token)
	base := "http://" + s.HTTPAddr().String()
	form := func(v url.Values) io.Reader { return strings.NewReader(v.Encode()) }
	formHdr := map[string]string{"Content-Type": "application/x-www-form-urlencoded"}

	res := do(t, "GET", base+"/devices/d1", nil, nil)
	if loc := res.Header.Get("Location"); res.StatusCode != 303 || loc != "/login?next=%2Fdevices%2Fd1" {
		t.Errorf("device page without a session: %s to %q, want 303 to the login", res.Status, loc)
	}
	if res := do(t, "GET", base+"/api/devices", nil, nil); res.StatusCode != 401 {
		t.Errorf("API without a session: %s, want 401", res.Status)
	}
	if res := do(t, "GET", base+"/api/events", nil, nil); res.StatusCode != 401 {
		t.Errorf("live feed without a session: %s, want 401", res.Status)
	}

	for _, c := range []struct{ name, token string }{{"wrong", "guess"}, {"empty", ""}, {"prefix", "the-toke"}} {
		res := do(t, "POST", base+"/login", form(url.Values{"token": {c.token}, "next": {"/devices/d1"}}), formHdr)
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != 401 || !strings.Contains(string(b), "not the controller&#39;s token") || len(res.Cookies()) != 0 {
			t.Errorf("%s token: %s %v %.300s, want 401, the reason and no cookie", c.name, res.Status, res.Cookies(), b)
		}
	}

	// What the browser sends comes back escaped.
	res = do(t, "GET", base+"/login?next="+url.QueryEscape(`/"><script>alert(1)</script>`), nil, nil)
	if b, _ := io.ReadAll(res.Body); res.StatusCode != 200 || strings.Contains(string(b), "<script>alert") ||
		!strings.Contains(string(b), `value="/&#34;&gt;&lt;script&gt;alert(1)&lt;/script&gt;"`) {
		t.Errorf("login page with a hostile next: %s %s", res.Status, b)
	}

	res = do(t, "POST", base+"/login", form(url.Values{"token": {token}, "next": {"//evil.example/"}}), formHdr)
	if loc := res.Header.Get("Location"); res.StatusCode != 303 || loc != "/" {
		t.Errorf("login with next=//evil.example: %s to %q, want 303 to /", res.Status, loc)
	}
	var ck *http.Cookie
	for _, c := range res.Cookies() {
		if c.Name == web.CookieName {
			ck = c
		}
	}
	if ck == nil {
		t.Fatalf("no session cookie: %v", res.Header["Set-Cookie"])
	}
	if !ck.HttpOnly || ck.SameSite != http.SameSiteStrictMode || ck.Path != "/" || ck.Secure || ck.MaxAge <= 0 {
		t.Errorf("cookie %s, want HttpOnly, SameSite=Strict, Path=/, a Max-Age, no Secure over plain HTTP", res.Header["Set-Cookie"])
	}
	cookie := map[string]string{"Cookie": ck.Name + "=" + ck.Value}
	for _, path := range []string{"/", "/devices/d1", "/api/devices"} {
		if res := do(t, "GET", base+path, nil, cookie); res.StatusCode != 200 {
			t.Errorf("GET %s with the session: %s", path, res.Status)
		}
	}
	if res := do(t, "GET", base+"/login?next=/devices/d1", nil, cookie); res.Header.Get("Location") != "/devices/d1" {
		t.Errorf("the login with a session: %s to %q, want straight to next", res.Status, res.Header.Get("Location"))
	}
	res = do(t, "PUT", base+"/api/devices/d1", strings.NewReader(`{"setpoint_c": 21}`), cookie)
	if res.StatusCode != 200 {
		t.Errorf("PUT with the session: %s", res.Status)
	}
	// The bearer token still works, for the CLI.
	if res := do(t, "GET", base+"/api/devices", nil, map[string]string{"Authorization": "Bearer " + token}); res.StatusCode != 200 {
		t.Errorf("bearer: %s", res.Status)
	}

	res = do(t, "POST", base+"/logout", nil, cookie)
	if res.StatusCode != 303 || res.Header.Get("Location") != "/login" {
		t.Errorf("logout: %s to %q", res.Status, res.Header.Get("Location"))
	}
	if cs := res.Cookies(); len(cs) != 1 || cs[0].MaxAge >= 0 {
		t.Errorf("logout cookie %v, want the session cookie cleared", res.Header["Set-Cookie"])
	}
	if res := do(t, "GET", base+"/api/devices", nil, cookie); res.StatusCode != 401 {
		t.Errorf("API with the ended session: %s, want 401", res.Status)
	}
}

// Over TLS the cookie is Secure.
func TestLoginCookieSecureOverTLS(t *testing.T) {
	d := web.New(nil, web.Options{Token: "tok", Logger: quiet})
	srv := httptest.NewTLSServer(d.Handler(http.NotFoundHandler()))
	defer srv.Close()
	req, _ := http.NewRequest("POST", srv.URL+"/login", strings.NewReader("token=tok"))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	c := srv.Client()
	c.CheckRedirect = noRedirect.CheckRedirect
	res, err := c.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if cs := res.Cookies(); len(cs) != 1 || !cs[0].Secure || !cs[0].HttpOnly {
		t.Errorf("cookie over TLS: %v, want Secure and HttpOnly", res.Header["Set-Cookie"])
	}

	// Behind a proxy that terminates TLS.
	plain := httptest.NewServer(d.Handler(http.NotFoundHandler()))
	defer plain.Close()
	res = do(t, "POST", plain.URL+"/login", strings.NewReader("token=tok"), map[string]string{
		"Content-Type": "application/x-www-form-urlencoded", "X-Forwarded-Proto": "https"})
	if cs := res.Cookies(); len(cs) != 1 || !cs[0].Secure {
		t.Errorf("cookie behind a TLS proxy: %v, want Secure", res.Header["Set-Cookie"])
	}
}

// sse reads server-sent events.
type sse struct {
	t  *testing.T
	sc *bufio.Scanner
	ch chan [2]string
}

func openEvents(t *testing.T, u string) (*sse, *http.Response) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 {
		return nil, res
	}
	s := &sse{t: t, sc: bufio.NewScanner(res.Body), ch: make(chan [2]string, 100)}
	send := func(ev [2]string) {
		select {
		case s.ch <- ev:
		case <-ctx.Done():
		}
	}
	go func() {
		defer close(s.ch)
		var name, data string
		for s.sc.Scan() {
			switch l := s.sc.Text(); {
			case l == "":
				if name != "" || data != "" {
					send([2]string{name, data})
				}
				name, data = "", ""
			case strings.HasPrefix(l, ":"):
				send([2]string{"comment", l})
			case strings.HasPrefix(l, "event: "):
				name = l[len("event: "):]
			case strings.HasPrefix(l, "data: "):
				data = l[len("data: "):]
			case strings.HasPrefix(l, "retry: "):
				name = "retry"
			}
		}
	}()
	return s, res
}

// next waits for an event that match accepts, skipping others.
func (s *sse) next(what string, match func(name, data string) bool) string {
	s.t.Helper()
	deadline := time.After(testenv.WaitTimeout)
	for {
		select {
		case ev, ok := <-s.ch:
			if !ok {
				s.t.Fatalf("the stream ended before %s", what)
			}
			if match(ev[0], ev[1]) {
				return ev[1]
			}
		case <-deadline:
			s.t.Fatalf("no %s", what)
		}
	}
}

// The live feed: a snapshot, then each change of a device as the API
// returns it, an offline device at once, and heartbeats while idle.
func TestEvents(t *testing.T) {
	s, dev := controller(t, "")
	d := web.New(s.Fleet(), web.Options{Heartbeat: 50 * time.Millisecond, MaxStreams: 2, Logger: quiet})
	srv := httptest.NewServer(d.Handler(api.NewHandler(s.Fleet(), api.Options{Events: d.Events(), Logger: quiet})))
	t.Cleanup(srv.Close) // after the feeds' contexts are cancelled
	t.Cleanup(d.Close)

	ev, res := openEvents(t, srv.URL+"/api/events")
	if ev == nil {
		t.Fatalf("GET /api/events: %s", res.Status)
	}
	if ct := res.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Errorf("Content-Type %q", ct)
	}
	ev.next("retry", func(n, _ string) bool { return n == "retry" })
	snap := ev.next("the snapshot", func(n, _ string) bool { return n == "snapshot" })
	var devs []fleet.Device
	if err := json.Unmarshal([]byte(snap), &devs); err != nil || len(devs) != 1 || devs[0].ID != "d1" || !devs[0].Online {
		t.Fatalf("snapshot %s: %v", snap, err)
	}

	event(t, dev, 2, 23.5)
	ev.next("d1 at 23.5", func(n, data string) bool {
		var d fleet.Device
		return n == "device" && json.Unmarshal([]byte(data), &d) == nil && d.ID == "d1" && d.Props["setpoint_c"].Val == 23.5
	})
	dev.Publish(t, "thermo/d1/status", 1, true, []byte(`{"v":1,"online":false}`))
	ev.next("d1 offline", func(n, data string) bool {
		var d fleet.Device
		return n == "device" && json.Unmarshal([]byte(data), &d) == nil && !d.Online
	})
	ev.next("a heartbeat", func(n, _ string) bool { return n == "comment" })

	// A second feed fits, a third is refused: each holds a goroutine.
	if ev2, res := openEvents(t, srv.URL+"/api/events"); ev2 == nil {
		t.Fatalf("second feed: %s", res.Status)
	}
	if _, res := openEvents(t, srv.URL+"/api/events"); res.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("third feed with MaxStreams 2: %s, want 503", res.Status)
	}

	// Close (at the server's shutdown) ends the feeds.
	d.Close()
	for range ev.ch { // closed when the server ends the response
	}
}

// api.Client.Follow reads the live feed of a real controller: the snapshot,
// a device's change, its removal; a wrong token is refused with the API's
// error, and the feed's end (the controller stopping) is an error.
func TestFollow(t *testing.T) {
	const token = "follow-token"
	s, dev := controller(t, token)
	bad, err := api.NewClient(s.HTTPAddr().String(), "wrong")
	if err != nil {
		t.Fatal(err)
	}
	var apiErr *api.Error
	if err := bad.Follow(context.Background(), func(api.Change) {}); !errors.As(err, &apiErr) || apiErr.Status != http.StatusUnauthorized {
		t.Fatalf("follow with a wrong token: %v, want HTTP 401", err)
	}

	c, err := api.NewClient(s.HTTPAddr().String(), token)
	if err != nil {
		t.Fatal(err)
	}
	changes := make(chan api.Change, 64)
	ended := make(chan error, 1)
	go func() { ended <- c.Follow(context.Background(), func(ch api.Change) { changes <- ch }) }()
	next := func(what string, match func(api.Change) bool) {
		t.Helper()
		for {
			select {
			case ch := <-changes:
				if match(ch) {
					return
				}
			case err := <-ended:
				t.Fatalf("waiting for %s: the feed ended: %v", what, err)
			case <-time.After(10 * time.Second):
				t.Fatalf("no %s", what)
			}
		}
	}
	next("the snapshot", func(ch api.Change) bool {
		return len(ch.Snapshot) == 1 && ch.Snapshot[0].ID == "d1" && ch.Snapshot[0].Online && ch.Snapshot[0].Telemetry == nil
	})
	event(t, dev, 2, 23.5)
	next("d1 at 23.5", func(ch api.Change) bool {
		return ch.Device != nil && ch.Device.ID == "d1" && ch.Device.Props["setpoint_c"].Val == 23.5
	})
	dev.Close()
	if _, err := c.Delete(context.Background(), "d1"); err != nil {
		t.Fatal(err)
	}
	next("d1 removed", func(ch api.Change) bool { return ch.Removed == "d1" })

	s.Close()
	select {
	case err := <-ended:
		if err == nil {
			t.Fatal("the feed ended with the controller and Follow returned nil")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Follow still reading after the controller stopped")
	}
}
