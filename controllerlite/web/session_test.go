package web

import (
	"testing"
	"time"
)

func TestSessions(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	s := newSessions(time.Hour, func() time.Time { return now })
	a, exp := s.create()
	if want := now.Add(time.Hour); !exp.Equal(want) {
		t.Errorf("expiry %v, want %v", exp, want)
	}
	b, _ := s.create()
	if a == b || len(a) < 40 {
		t.Fatalf("ids %q and %q: want two different long random ids", a, b)
	}
	for _, c := range []struct {
		name string
		id   string
		want bool
	}{
		{"a new session", a, true},
		{"another", b, true},
		{"unknown", "AAAA", false},
		{"empty", "", false},
		{"a prefix of one", a[:len(a)-1], false},
	} {
		if got := s.valid(c.id); got != c.want {
			t.Errorf("%s: valid = %v, want %v", c.name, got, c.want)
		}
	}

	s.remove(a)
	if s.valid(a) {
		t.Error("a removed session is still valid")
	}
	if !s.valid(b) {
		t.Error("removing one session ended another")
	}

	now = now.Add(time.Hour - time.Second)
	if !s.valid(b) {
		t.Error("a session ended before its expiry")
	}
	now = now.Add(time.Second)
	if s.valid(b) {
		t.Error("a session is valid at its expiry")
	}
	if n := s.len(); n != 0 {
		t.Errorf("%d sessions kept after expiry", n)
	}
}

// The store is bounded: past maxSessions the session closest to expiry
// goes, and expired ones are swept on the way.
func TestSessionsBounded(t *testing.T) {
	now := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	s := newSessions(time.Hour, func() time.Time { return now })
	first, _ := s.create()
	now = now.Add(time.Second)
	var last string
	for range maxSessions {
		last, _ = s.create()
	}
	if n := s.len(); n != maxSessions {
		t.Errorf("%d sessions, want the bound %d", n, maxSessions)
	}
	if s.valid(first) {
		t.Error("the oldest session survived past the bound")
	}
	if !s.valid(last) {
		t.Error("the newest session is gone")
	}
	now = now.Add(2 * time.Hour)
	s.create()
	if n := s.len(); n != 1 {
		t.Errorf("%d sessions after all but one expired, want 1", n)
	}
}

func TestLocalPath(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/devices/d1", "/devices/d1"},
		{"/?x=1", "/?x=1"},
		{"", "/"},
		{"devices", "/"},
		{"//evil.example/", "/"},
		{"/\\evil.example", "/"},
		{"https://evil.example/", "/"},
		{"javascript:alert(1)", "/"},
		{"/a\r\nSet-Cookie: x=1", "/"},
	} {
		if got := localPath(c.in); got != c.want {
			t.Errorf("localPath(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLoopbackHost(t *testing.T) {
	for _, c := range []struct {
		host string
		want bool
	}{
		{"127.0.0.1:8080", true},
		{"127.0.0.1", true},
		{"127.1.2.3:80", true},
		{"[::1]:8080", true},
		{"localhost:8080", true},
		{"LOCALHOST", true},
		{"localhost.:8080", true},
		{"evil.example:8080", false},
		{"localhost.evil.example", false},
		{"192.168.1.10:8080", false},
		{"", false},
	} {
		if got := loopbackHost(c.host); got != c.want {
			t.Errorf("loopbackHost(%q) = %v, want %v", c.host, got, c.want)
		}
	}
}
