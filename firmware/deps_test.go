package main

import (
	"os/exec"
	"strings"
	"testing"
)

// TestDeps keeps what the firmware must not carry out of the binary: the
// controller and its broker and store, test helpers, the testing package.
// A Pi Zero has little memory and flash, and code that is not there cannot
// misbehave on a thermostat.
func TestDeps(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	forbidden := []string{
		"github.com/mochi-mqtt/",
		"go.etcd.io/bbolt",
		"github.com/thermofleet/thermo/controllerlite",
		"github.com/thermofleet/thermo/internal/testenv",
		"github.com/thermofleet/thermo/hal/haltest",
		"net/http/httptest",
		"testing",
	}
	for _, pkg := range strings.Fields(string(out)) {
		for _, f := range forbidden {
			if pkg == f || strings.HasPrefix(pkg, f) && (strings.HasSuffix(f, "/") || strings.HasPrefix(pkg, f+"/")) {
				t.Errorf("the thermostat binary links %s", pkg)
			}
		}
	}
}
