package release

import (
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// Arch names a platform as manifests do: GOOS/GOARCH, and /vGOARM on arm
// (a GOARM=7 binary dies with SIGILL on a Pi Zero, so v6 and v7 differ).
func Arch(goos, goarch, goarm string) string {
	a := goos + "/" + goarch
	if goarch == "arm" {
		if goarm == "" {
			goarm = "7" // the go tool's default
		}
		a += "/v" + strings.TrimSuffix(strings.TrimSuffix(goarm, ",softfloat"), ",hardfloat")
	}
	return a
}

// HostArch is the platform of the running binary: a board installs only
// releases built exactly as it was.
func HostArch() string {
	goarm := ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		goarm = setting(bi.Settings, "GOARM")
	}
	return Arch(runtime.GOOS, runtime.GOARCH, goarm)
}

func setting(s []debug.BuildSetting, key string) string {
	for _, kv := range s {
		if kv.Key == key {
			return kv.Value
		}
	}
	return ""
}

// Describe returns the manifest of the binary at path, unsigned: size and
// hash, and the version (its -X main.version) and platform its Go build
// information records. version or arch, when not "", stand in for what
// the binary records (a binary built without -X main.version says "dev",
// which no board can order).
func Describe(path, version, arch string, expires time.Time) (Manifest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Manifest{}, err
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return Manifest{}, fmt.Errorf("read %s: %w", path, err)
	}
	m := Manifest{Format: Format, Binary: filepath.Base(path), Size: n, SHA256: hex.EncodeToString(h.Sum(nil)), Expires: expires}
	bi, biErr := buildinfo.ReadFile(path)
	if version == "" {
		if biErr != nil {
			return Manifest{}, fmt.Errorf("%s: no Go build information (%w): give --version", path, biErr)
		}
		version = ldflagVersion(setting(bi.Settings, "-ldflags"))
		if version == "" && Arch(setting(bi.Settings, "GOOS"), setting(bi.Settings, "GOARCH"), setting(bi.Settings, "GOARM")) == HostArch() {
			version = askVersion(path)
		}
		if version == "" {
			return Manifest{}, fmt.Errorf("%s: no version recorded (a -trimpath build keeps no -ldflags) and `BINARY version` does not say it here: give --version", path)
		}
	}
	if arch == "" {
		if biErr != nil {
			return Manifest{}, fmt.Errorf("%s: no Go build information (%w): give --arch", path, biErr)
		}
		arch = Arch(setting(bi.Settings, "GOOS"), setting(bi.Settings, "GOARCH"), setting(bi.Settings, "GOARM"))
	}
	if _, err := ParseVersion(version); err != nil {
		return Manifest{}, fmt.Errorf("%s: %w", path, err)
	}
	m.Version, m.Arch = version, arch
	return m, nil
}

// askVersion runs `BINARY version` (a binary for this platform) and
// returns the second word of its first line, as cli.Version prints it:
// "thermostat 1.4.0 (commit ...)".
func askVersion(path string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, path, "version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	if f := strings.Fields(line); len(f) >= 2 {
		return f[1]
	}
	return ""
}

// ldflagVersion finds -X main.version=V in a build's -ldflags.
func ldflagVersion(ldflags string) string {
	f := strings.Fields(ldflags)
	for i, w := range f {
		v, ok := strings.CutPrefix(w, "main.version=")
		if !ok {
			v, ok = strings.CutPrefix(w, "-X=main.version=")
		}
		if ok && (i > 0 && f[i-1] == "-X" || strings.HasPrefix(w, "-X=")) {
			return strings.Trim(v, `'"`)
		}
	}
	return ""
}
