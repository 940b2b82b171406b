package packaging

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// repoRoot is the module's directory.
func repoRoot(t testing.TB) string {
	t.Helper()
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// run runs a command with a deadline and returns its combined output,
// failing the test on error.
func run(t testing.TB, dir string, env []string, name string, args ...string) string {
	t.Helper()
	out, err := tryRun(dir, env, 10*time.Minute, name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return out
}

func tryRun(dir string, env []string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var b bytes.Buffer
	cmd.Stdout, cmd.Stderr = &b, &b
	err := cmd.Run()
	return b.String(), err
}

var (
	hostArchOnce sync.Once
	hostArch     string
)

// emulated reports whether this test binary runs under qemu-user (make
// test-arm): the go tool then reports another GOHOSTARCH.
func emulated(t testing.TB) bool {
	hostArchOnce.Do(func() {
		out, err := exec.Command("go", "env", "GOHOSTARCH").Output()
		if err == nil {
			hostArch = strings.TrimSpace(string(out))
		}
	})
	return hostArch != "" && hostArch != runtime.GOARCH
}

// ldflags are the Makefile's: stripped, with version, commit and date.
func ldflags(version string) string {
	return "-s -w -X main.version=" + version + " -X main.commit=abc1234 -X main.date=2026-11-24T12:00:00Z"
}

// crossBuild builds pkg (./firmware) for GOARCH arch (and GOARM goarm) as
// `make cross` does, into dir.
func crossBuild(t testing.TB, root, dir, pkg, arch, goarm, version string) string {
	t.Helper()
	out := filepath.Join(dir, filepath.Base(pkg)+"-"+arch+goarm)
	run(t, root, []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=" + arch, "GOARM=" + goarm},
		"go", "build", "-trimpath", "-ldflags", ldflags(version), "-o", out, pkg)
	return out
}
