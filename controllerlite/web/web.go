// Package web is controllerlite's dashboard: the fleet and device pages
// (static HTML, CSS and ES modules embedded in the binary, no build step),
// the live feed they follow (GET /api/events, server-sent events fed by
// fleet.Watch), and the browser's login.
//
// The pages read and write through the HTTP API (package api), on the same
// listener: a setpoint set on the page is a PUT /api/devices/{id} like the
// CLI's. With a token (--http-token-file) a browser logs in once with it
// at /login and gets a session cookie (HttpOnly, SameSite=Strict, Secure
// over TLS, a TLS-terminating proxy's included), which the API accepts in
// place of the bearer token. Without a token the controller listens on
// loopback only (api.Listen) and the pages open directly.
//
// Handler wraps the whole site, the API included, in two checks a browser
// makes necessary: http.CrossOriginProtection refuses a state-changing
// request another site's page makes (a form posted to /login or a PUT
// fetched from evil.example), and, without a token, a request whose Host
// is not a loopback name is refused, so a page on another site cannot
// reach the API by pointing its own name at 127.0.0.1 (DNS rebinding).
package web

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"html"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/protocol"
)

// staticFS holds what the pages load (CSS, ES modules, the vendored chart
// library), served as they are; pagesFS the HTML, whose few {{name}}
// placeholders render fills. (Not html/template: its reflection keeps
// every exported method of the binary alive, 2.4 MB for four values.)
var (
	//go:embed static
	staticFS embed.FS
	//go:embed pages
	pagesFS embed.FS
)

// Fleet is what the dashboard follows; *fleet.Fleet implements it.
type Fleet interface {
	Devices() []fleet.Device
	Device(id string) (fleet.Device, bool)
	Watch() *fleet.Watcher
}

// Defaults of Options.
const (
	DefaultSessionTTL = 30 * 24 * time.Hour
	DefaultMaxStreams = 64
	DefaultHeartbeat  = 15 * time.Second
)

// Options configure the dashboard.
type Options struct {
	// Token is the API's token; empty means no login (loopback only).
	Token string
	// SessionTTL is how long a login lasts (DefaultSessionTTL).
	SessionTTL time.Duration
	// MaxStreams bounds the live feeds open at once (DefaultMaxStreams):
	// each holds a goroutine and a fleet watcher.
	MaxStreams int
	// Heartbeat is how often an idle live feed sends a comment, so that
	// proxies and NAT boxes keep it open (DefaultHeartbeat).
	Heartbeat time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Now is the sessions' clock, time.Now by default.
	Now func() time.Time
}

// Dashboard serves the pages, the login and the live feed.
type Dashboard struct {
	f        Fleet
	opts     Options
	log      *slog.Logger
	sessions *sessions
	static   http.Handler
	slots    chan struct{} // one per open live feed

	ctx    context.Context // done at shutdown: ends the live feeds
	cancel context.CancelFunc
	once   sync.Once
}

// New returns the dashboard of f.
func New(f Fleet, o Options) *Dashboard {
	if o.SessionTTL <= 0 {
		o.SessionTTL = DefaultSessionTTL
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = DefaultMaxStreams
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	sub, err := fs.Sub(staticFS, "static")
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Dashboard{
		f: f, opts: o, log: o.Logger,
		sessions: newSessions(o.SessionTTL, o.Now),
		static:   http.StripPrefix("/static/", etagged(sub, http.FileServerFS(sub))),
		slots:    make(chan struct{}, o.MaxStreams),
		ctx:      ctx, cancel: cancel,
	}
}

// Session reports whether r carries a valid session cookie: the API's
// second way past its token (api.Options.Session).
func (d *Dashboard) Session(r *http.Request) bool {
	c, err := r.Cookie(CookieName)
	return err == nil && d.sessions.valid(c.Value)
}

// Close ends every live feed, so that an HTTP server's Shutdown, which
// waits for open requests, does not wait for them: register it with
// http.Server.RegisterOnShutdown.
func (d *Dashboard) Close() { d.once.Do(d.cancel) }

// Handler returns the whole site: the pages, the login and static files,
// and every other path handed to next (the API, which serves Events).
func (d *Dashboard) Handler(next http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", d.page("fleet.html"))
	mux.HandleFunc("GET /devices/{id}", d.page("device.html"))
	mux.HandleFunc("GET /login", d.loginForm)
	mux.HandleFunc("POST /login", d.login)
	mux.HandleFunc("POST /logout", d.logout)
	mux.Handle("GET /static/", d.static)
	mux.Handle("/", next)

	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		d.log.Warn("web: cross-origin request refused", "method", r.Method, "path", r.URL.Path,
			"origin", r.Header.Get("Origin"), "remote", r.RemoteAddr)
		http.Error(w, "cross-origin request refused", http.StatusForbidden)
	}))
	h := cop.Handler(mux)
	if d.opts.Token == "" {
		h = loopbackHostOnly(h)
	}
	return securityHeaders(h)
}

// page serves one of the static pages, after the login when there is a
// token. The pages hold no data: what they show comes from the API.
func (d *Dashboard) page(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if d.opts.Token != "" && !d.Session(r) {
			http.Redirect(w, r, "/login?next="+url.QueryEscape(r.URL.RequestURI()), http.StatusSeeOther)
			return
		}
		d.render(w, http.StatusOK, name, pageData{Login: d.opts.Token != "", Protocol: protocolRules})
	}
}

// pageData fills the pages.
type pageData struct {
	// Login: the controller has a token, so the pages offer to log out.
	Login bool
	// Protocol is protocolRules.
	Protocol string
	// Next and Error are the login page's: where to go after it, and why
	// the last attempt was refused.
	Next, Error string
}

// protocolRules are the rules of package protocol the pages check before
// sending (JSON in the body's data-protocol), so that they live in one
// place: the setpoint's range, the entries a day, and the presets of a
// device that never received a presets write.
var protocolRules = func() string {
	b, err := json.Marshal(map[string]any{
		"min_c": protocol.MinSetpoint, "max_c": protocol.MaxSetpoint,
		"max_entries": protocol.MaxEntriesPerDay, "default_presets": protocol.DefaultPresets,
	})
	if err != nil {
		panic(err)
	}
	return string(b)
}()

// render writes page name with its placeholders filled, each value
// escaped for HTML text and attributes. The replacer makes one pass over
// the page, so a value holding "{{...}}" stays text.
func (d *Dashboard) render(w http.ResponseWriter, code int, name string, data pageData) {
	page, err := fs.ReadFile(pagesFS, "pages/"+name)
	if err != nil {
		panic(err) // the pages are part of the binary
	}
	login, errHTML := "", ""
	if data.Login {
		login = "1"
	}
	if data.Error != "" {
		errHTML = `<p class="error" id="login-error" role="alert">` + html.EscapeString(data.Error) + `</p>`
	}
	fill := strings.NewReplacer("{{login}}", login, "{{protocol}}", html.EscapeString(data.Protocol),
		"{{next}}", html.EscapeString(data.Next), "{{error}}", errHTML)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	if _, err := fill.WriteString(w, string(page)); err != nil {
		d.log.Debug("web: page", "page", name, "error", err)
	}
}

// etagged gives each static file an ETag of its content and asks
// browsers to revalidate: embedded files have no modification time, so
// without it a phone would fetch the chart library on every page.
func etagged(fsys fs.FS, next http.Handler) http.Handler {
	tags := map[string]string{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(b)
		tags[p] = `"` + hex.EncodeToString(sum[:12]) + `"`
		return nil
	})
	if err != nil {
		panic(err) // the embedded tree is part of the binary
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if tag, ok := tags[strings.TrimPrefix(r.URL.Path, "/")]; ok {
			w.Header().Set("ETag", tag)
			w.Header().Set("Cache-Control", "no-cache")
		}
		next.ServeHTTP(w, r)
	})
}

// securityHeaders: the pages load nothing from elsewhere and are never
// framed; uPlot sets styles through the DOM, which style-src allows.
func securityHeaders(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("X-Frame-Options", "DENY")
		h.Set("Referrer-Policy", "same-origin")
		next.ServeHTTP(w, r)
	})
}

// loopbackHostOnly refuses requests whose Host header is not a loopback
// name or address. Without a token the listener is on loopback, and only a
// page that rebound its own host name to 127.0.0.1 sends another Host.
func loopbackHostOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !loopbackHost(r.Host) {
			http.Error(w, "host "+r.Host+" is not a loopback name: without --http-token-file the controller answers only to localhost, 127.0.0.1 or [::1]", http.StatusMisdirectedRequest)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func loopbackHost(hostport string) bool {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.Trim(host, "[]"), ".")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
