package release

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/cli"
)

func runCLI(args ...string) (string, error) {
	var out bytes.Buffer
	err := RunCLI(args, &out, &out)
	return out.String(), err
}

// TestCLI goes through keygen, sign and verify as a release manager does,
// and the refusals a user meets.
func TestCLI(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "thermostat-2.0.0")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=2.0.0", "-o", bin, "./testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	keys := filepath.Join(dir, "keys")
	if out, err := runCLI("keygen", "--dir", keys); err != nil || !strings.Contains(out, "release.key") {
		t.Fatalf("keygen: %v\n%s", err, out)
	}
	if _, err := runCLI("keygen", "--dir", keys); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second keygen: %v", err)
	}
	key, pub := filepath.Join(keys, PrivateKeyFile), filepath.Join(keys, PublicKeyFile)
	out, err := runCLI("sign", "--key", key, "--min-version", "1.0.0", "--expires", "720h", bin)
	if err != nil {
		t.Fatalf("sign: %v\n%s", err, out)
	}
	manifest := bin + ManifestSuffix
	data, err := os.ReadFile(manifest)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(data)
	if err != nil || f.Manifest.Version != "2.0.0" || f.Manifest.MinVersion != "1.0.0" || f.Manifest.Binary != "thermostat-2.0.0" {
		t.Fatalf("manifest %+v, %v", f.Manifest, err)
	}
	if out, err := runCLI("verify", "--pub", pub, manifest, bin); err != nil || !strings.Contains(out, "good signature") {
		t.Fatalf("verify: %v\n%s", err, out)
	}
	other := filepath.Join(dir, "other")
	if _, err := WriteKeyPair(other, false); err != nil {
		t.Fatal(err)
	}
	if _, err := runCLI("verify", "--pub", filepath.Join(other, PublicKeyFile), manifest); !errors.Is(err, ErrSignature) {
		t.Fatalf("verify with another key: %v", err)
	}
	os.WriteFile(bin, []byte("not the binary"), 0o755)
	if _, err := runCLI("verify", "--pub", pub, manifest, bin); !errors.Is(err, ErrSize) {
		t.Fatalf("verify of a replaced binary: %v", err)
	}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"no command", nil},
		{"unknown command", []string{"publish"}},
		{"sign without key", []string{"sign", bin}},
		{"sign without binary", []string{"sign", "--key", key}},
		{"bad expiry", []string{"sign", "--key", key, "--expires", "soon", bin}},
		{"past expiry", []string{"sign", "--key", key, "--expires", "2020-01-01T00:00:00Z", bin}},
		{"verify without key", []string{"verify", manifest}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := runCLI(tc.args...); !errors.Is(err, cli.ErrUsage) {
				t.Fatalf("%v, want a usage error", err)
			}
		})
	}
	if _, err := runCLI("sign", "--key", pub, bin); err == nil || !strings.Contains(err.Error(), "PRIVATE KEY") {
		t.Fatalf("signing with the public key: %v", err)
	}
}
