package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// TestSoakDay plays one simulated day of four thermostats at 3,000 times
// real time (a broker restart included), the short version of `make soak`,
// and fails on any check the soak makes: an entry missed or late, the
// sides unequal, a relay rule broken, the heap grown.
func TestSoakDay(t *testing.T) {
	if testing.Short() {
		t.Skip("plays a simulated day in about half a minute")
	}
	var out bytes.Buffer
	err := run(context.Background(), []string{"--days", "1", "--devices", "4", "--speed", "3000"}, &out, &out)
	t.Log(out.String())
	if err != nil || !strings.Contains(out.String(), "PASS") {
		t.Fatalf("soak: %v", err)
	}
}
