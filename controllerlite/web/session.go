package web

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"net/http"
	"strings"
	"sync"
	"time"
)

// CookieName is the dashboard's session cookie.
const CookieName = "thermo_session"

// maxSessions bounds the store: each login adds one, and logins need the
// token, but a script that logs in in a loop must not grow it for ever.
// Beyond it the session closest to expiry goes.
const maxSessions = 1000

// sessions are the logged-in browsers, in memory: a controller restart
// asks for the token again. The store keys on the id's hash, so the ids
// themselves are nowhere but in the browsers' cookies.
type sessions struct {
	ttl time.Duration
	now func() time.Time
	mu  sync.Mutex
	exp map[[sha256.Size]byte]time.Time
}

func newSessions(ttl time.Duration, now func() time.Time) *sessions {
	return &sessions{ttl: ttl, now: now, exp: map[[sha256.Size]byte]time.Time{}}
}

// create returns a new session id (256 random bits) and its expiry.
func (s *sessions) create() (string, time.Time) {
	id := rand.Text() + rand.Text() // 2 x 128 bits, base32
	now := s.now()
	exp := now.Add(s.ttl)
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, e := range s.exp {
		if !now.Before(e) {
			delete(s.exp, k)
		}
	}
	if len(s.exp) >= maxSessions {
		var oldest [sha256.Size]byte
		var first time.Time
		for k, e := range s.exp {
			if first.IsZero() || e.Before(first) {
				oldest, first = k, e
			}
		}
		delete(s.exp, oldest)
	}
	s.exp[sha256.Sum256([]byte(id))] = exp
	return id, exp
}

// valid reports whether id is a session that has not expired.
func (s *sessions) valid(id string) bool {
	if id == "" {
		return false
	}
	k := sha256.Sum256([]byte(id))
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exp[k]
	if ok && !s.now().Before(e) {
		delete(s.exp, k)
		return false
	}
	return ok
}

// remove ends a session (logout).
func (s *sessions) remove(id string) {
	s.mu.Lock()
	delete(s.exp, sha256.Sum256([]byte(id)))
	s.mu.Unlock()
}

func (s *sessions) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.exp)
}

func (d *Dashboard) loginForm(w http.ResponseWriter, r *http.Request) {
	next := localPath(r.URL.Query().Get("next"))
	if d.opts.Token == "" || d.Session(r) {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	d.renderLogin(w, http.StatusOK, pageData{Next: next})
}

func (d *Dashboard) renderLogin(w http.ResponseWriter, code int, data pageData) {
	d.render(w, code, "login.html", data)
}

// login takes the token from the form and, when it is the API's, sets
// the session cookie and sends the browser where it was going.
func (d *Dashboard) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		d.renderLogin(w, http.StatusBadRequest, pageData{Next: "/", Error: "the form could not be read: " + err.Error()})
		return
	}
	next := localPath(r.PostForm.Get("next"))
	if d.opts.Token == "" {
		http.Redirect(w, r, next, http.StatusSeeOther)
		return
	}
	got := sha256.Sum256([]byte(strings.TrimSpace(r.PostForm.Get("token"))))
	want := sha256.Sum256([]byte(d.opts.Token))
	if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
		d.log.Warn("web: login refused: wrong token", "remote", r.RemoteAddr)
		d.renderLogin(w, http.StatusUnauthorized, pageData{Next: next, Error: "That is not the controller's token (the content of its --http-token-file)."})
		return
	}
	id, exp := d.sessions.create()
	http.SetCookie(w, &http.Cookie{
		Name: CookieName, Value: id, Path: "/", Expires: exp,
		MaxAge: int(d.opts.SessionTTL / time.Second), HttpOnly: true,
		Secure: overTLS(r), SameSite: http.SameSiteStrictMode,
	})
	d.log.Info("web: login", "remote", r.RemoteAddr)
	http.Redirect(w, r, next, http.StatusSeeOther)
}

// logout ends the session and clears the cookie.
func (d *Dashboard) logout(w http.ResponseWriter, r *http.Request) {
	if c, err := r.Cookie(CookieName); err == nil {
		d.sessions.remove(c.Value)
	}
	http.SetCookie(w, &http.Cookie{Name: CookieName, Value: "", Path: "/", MaxAge: -1,
		HttpOnly: true, Secure: overTLS(r), SameSite: http.SameSiteStrictMode})
	http.Redirect(w, r, "/login", http.StatusSeeOther)
}

// overTLS reports whether the browser reached us over TLS: directly, or
// through a reverse proxy that terminates TLS and says so. Trusting the
// header is safe here: it can only add Secure to the cookie, which keeps
// it off plain HTTP.
func overTLS(r *http.Request) bool {
	return r.TLS != nil || strings.EqualFold(r.Header.Get("X-Forwarded-Proto"), "https")
}

// localPath returns p if it is a path on this site, else "/": the login's
// next must not send the browser to another site ("//evil.example",
// "/\evil.example" and "https://..." are all elsewhere).
func localPath(p string) string {
	if !strings.HasPrefix(p, "/") || strings.HasPrefix(p, "//") || strings.HasPrefix(p, "/\\") ||
		strings.ContainsAny(p, "\r\n") {
		return "/"
	}
	return p
}
