package testenv

import (
	"testing"
	"time"
)

// pollEvery is how often the wait helpers look at their condition.
const pollEvery = 5 * time.Millisecond

// Eventually polls cond until it holds, failing t after within. cond
// returns what it saw, for the failure message. It is for conditions that
// offer nothing to block on (another process's state, a store); a test
// that can wait on a channel or an event should.
func Eventually(t testing.TB, within time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	var seen string
	ok := PollUpTo(within, func() bool {
		var ok bool
		ok, seen = cond()
		return ok
	})
	if !ok {
		t.Fatalf("timed out after %v waiting for %s; last seen: %s", within, what, seen)
	}
}

// WaitFor polls cond until it holds, failing t after WaitTimeout.
func WaitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	if !PollUpTo(WaitTimeout, cond) {
		t.Fatalf("timed out after %v waiting for %s", WaitTimeout, what)
	}
}

// PollUpTo polls cond for at most d and reports whether it held.
func PollUpTo(d time.Duration, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(pollEvery)
	defer tick.Stop()
	for !cond() {
		select {
		case <-tick.C:
		case <-deadline.C:
			return cond()
		}
	}
	return true
}
