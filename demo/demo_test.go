package main

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestDemoScript runs the scripted part of `make demo` against freshly
// built binaries: the demo checks every outcome it prints and fails
// otherwise, so this test holds the main job to its word.
func TestDemoScript(t *testing.T) {
	if testing.Short() {
		t.Skip("builds both binaries and runs a fleet")
	}
	bin := t.TempDir()
	for _, b := range [][2]string{{"thermostat", "../firmware"}, {"controllerlite", "../controllerlite"}} {
		cmd := exec.Command("go", "build", "-o", filepath.Join(bin, b[0]), b[1])
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("build %s: %v\n%s", b[0], err, out)
		}
	}
	var out bytes.Buffer
	if err := run([]string{"--bin", bin, "--exit-after-script"}, &out); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	for _, want := range []string{
		"are concurrent",
		"d1 discards 18 (concurrent: the device's write wins); the controller takes 23",
		"23 / 23",
		"d1 applies 18 and reports it; both sides agree",
		"18 / 18",
		"Script done",
		"dashboard: http://127.0.0.1:",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
}
