package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestSoakDays plays three simulated days of four thermostats at 6,000 times
// real time (three broker restarts), the short version of `make soak`,
// and fails on any check the soak makes: an entry missed or late, the
// sides unequal, a relay rule broken, the heap grown.
func TestSoakDays(t *testing.T) {
	if testing.Short() {
		t.Skip("plays three simulated days in about 45 s")
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--days", "3", "--devices", "4", "--speed", "6000"}, &out, &out)
	t.Log(out.String())
	if err != nil || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("soak: %v", err)
	}
}
