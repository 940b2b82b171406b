package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

func TestVersionCompare(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{
		{"1.2.3", "1.2.3", 0},
		{"v1.2.3", "1.2.3", 0},
		{"1.2.3", "1.2.4", -1},
		{"1.10.0", "1.9.9", 1},
		{"2.0.0", "1.99.99", 1},
		{"1.3.0-rc.1", "1.3.0", -1},
		{"1.3.1~next", "1.3.1", -1},
		{"1.3.1~next", "1.3.0", 1},
		{"1.0.0-rc.2", "1.0.0-rc.10", -1},
		{"1.0.0-alpha", "1.0.0-alpha.1", -1},
		{"1.0.0-1", "1.0.0-alpha", -1},
		{"1.0.0+build.5", "1.0.0", 0},
	} {
		a, err := ParseVersion(tc.a)
		if err != nil {
			t.Fatal(err)
		}
		b, err := ParseVersion(tc.b)
		if err != nil {
			t.Fatal(err)
		}
		if got := a.Compare(b); got != tc.want {
			t.Errorf("Compare(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
		if got := b.Compare(a); got != -tc.want {
			t.Errorf("Compare(%s, %s) = %d, want %d", tc.b, tc.a, got, -tc.want)
		}
	}
	for _, bad := range []string{"dev", "", "1.2", "1.2.3.4", "1.02.3", "1.2.x", "1.2.3-"} {
		if _, err := ParseVersion(bad); err == nil {
			t.Errorf("ParseVersion(%q) accepted", bad)
		}
	}
}

var now = time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)

func testKey(t *testing.T) (ed25519.PublicKey, ed25519.PrivateKey) {
	t.Helper()
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return pk, sk
}

func manifest() Manifest {
	return Manifest{Version: "1.4.0", Arch: "linux/arm64", Binary: "thermostat-1.4.0-linux-arm64",
		Size: 5, SHA256: strings.Repeat("ab", 32), Expires: now.Add(30 * 24 * time.Hour)}
}

// TestVerify: a manifest a board must refuse is refused with the reason it
// reports; the good one passes.
func TestVerify(t *testing.T) {
	pk, sk := testKey(t)
	otherPK, otherSK := testKey(t)
	sign := func(m Manifest, sk ed25519.PrivateKey) []byte {
		t.Helper()
		b, err := Sign(m, sk, now)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	good := sign(manifest(), sk)
	// edit changes one field of the signed file's JSON, keeping the signature.
	edit := func(data []byte, f func(*File)) []byte {
		var file File
		if err := json.Unmarshal(data, &file); err != nil {
			t.Fatal(err)
		}
		f(&file)
		b, _ := json.Marshal(file)
		return b
	}
	expired := manifest()
	expired.Expires = now.Add(time.Hour)
	for _, tc := range []struct {
		name string
		data []byte
		pk   ed25519.PublicKey
		at   time.Time
		want error
		msg  string
	}{
		{"good", good, pk, now, nil, ""},
		{"good, reformatted", edit(good, func(*File) {}), pk, now, nil, ""},
		{"signed by another key", sign(manifest(), otherSK), pk, now, ErrSignature, "this thermostat trusts key " + KeyID(pk)},
		{"trusting another key", good, otherPK, now, ErrSignature, "signed by key " + KeyID(pk)},
		{"version changed", edit(good, func(f *File) { f.Manifest.Version = "9.0.0" }), pk, now, ErrSignature, "changed after it was signed"},
		{"hash changed", edit(good, func(f *File) { f.Manifest.SHA256 = strings.Repeat("cd", 32) }), pk, now, ErrSignature, "changed"},
		{"expiry pushed back", edit(good, func(f *File) { f.Manifest.Expires = f.Manifest.Expires.AddDate(1, 0, 0) }), pk, now, ErrSignature, "changed"},
		{"downgrade allowed afterwards", edit(good, func(f *File) { f.Manifest.AllowDowngrade = true }), pk, now, ErrSignature, "changed"},
		{"signature truncated", edit(good, func(f *File) { f.Signature = f.Signature[:20] }), pk, now, ErrSignature, "not 64 bytes"},
		{"signature zero", edit(good, func(f *File) { f.Signature = base64.StdEncoding.EncodeToString(make([]byte, 64)) }), pk, now, ErrSignature, ""},
		{"expired", sign(expired, sk), pk, now.Add(2 * time.Hour), ErrExpired, "expired at 2026-12-04T13:00:00Z"},
		{"expires exactly now", sign(expired, sk), pk, now.Add(time.Hour), ErrExpired, ""},
		{"unknown field", []byte(strings.Replace(string(good), `"format"`, `"extra": 1, "format"`, 1)), pk, now, ErrMalformed, `unknown field "extra"`},
		{"not JSON", []byte("thermostat"), pk, now, ErrMalformed, ""},
		{"too big", append(good, make([]byte, MaxManifestSize)...), pk, now, ErrMalformed, "at most"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, err := Verify(tc.data, tc.pk, tc.at)
			if tc.want == nil {
				if err != nil {
					t.Fatal(err)
				}
				if m.Version != "1.4.0" || m.KeyID != KeyID(pk) || !m.Signed.Equal(now) {
					t.Errorf("manifest %+v", m)
				}
				return
			}
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want %v containing %q", err, tc.want, tc.msg)
			}
		})
	}
}

// TestSignRefuses: what a signer gets wrong is refused before signing.
func TestSignRefuses(t *testing.T) {
	_, sk := testKey(t)
	for _, tc := range []struct {
		name string
		f    func(*Manifest)
		msg  string
	}{
		{"dev version", func(m *Manifest) { m.Version = "dev" }, "MAJOR.MINOR.PATCH"},
		{"bad min version", func(m *Manifest) { m.MinVersion = "one" }, "min_version"},
		{"path as binary", func(m *Manifest) { m.Binary = "../x" }, "plain file name"},
		{"hidden binary", func(m *Manifest) { m.Binary = ".x" }, "plain file name"},
		{"no size", func(m *Manifest) { m.Size = 0 }, "size 0"},
		{"bad hash", func(m *Manifest) { m.SHA256 = "AB" }, "64 lower-case hex"},
		{"no arch", func(m *Manifest) { m.Arch = "" }, "no arch"},
		{"expires before signing", func(m *Manifest) { m.Expires = now.Add(-time.Hour) }, "not after it was signed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest()
			tc.f(&m)
			if _, err := Sign(m, sk, now); !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v, want one containing %q", err, tc.msg)
			}
		})
	}
}

// TestCheck: the board's own checks, each refusal with its reason code.
func TestCheck(t *testing.T) {
	board := Target{Arch: "linux/arm64", Running: "1.3.2"}
	for _, tc := range []struct {
		name   string
		f      func(*Manifest)
		t      Target
		reason string
		msg    string
	}{
		{"newer", func(*Manifest) {}, board, "", ""},
		{"wrong architecture", func(m *Manifest) { m.Arch = "linux/arm/v6" }, board, "wrong_arch", "for linux/arm/v6, this board runs linux/arm64"},
		{"armv7 on armv6", func(m *Manifest) { m.Arch = "linux/arm/v7" }, Target{Arch: "linux/arm/v6", Running: "1.0.0"}, "wrong_arch", ""},
		{"same version", func(m *Manifest) { m.Version = "1.3.2" }, board, "downgrade", "is the running version"},
		{"downgrade", func(m *Manifest) { m.Version = "1.3.1" }, board, "downgrade", "older than the running 1.3.2 and the manifest does not allow a downgrade"},
		{"snapshot before its release", func(m *Manifest) { m.Version = "1.3.2~next" }, board, "downgrade", ""},
		{"downgrade allowed", func(m *Manifest) { m.Version = "1.3.1"; m.AllowDowngrade = true }, board, "", ""},
		{"running dev build", func(*Manifest) {}, Target{Arch: "linux/arm64", Running: "dev"}, "downgrade", "cannot be compared"},
		{"minimum met", func(m *Manifest) { m.MinVersion = "1.3.2" }, board, "", ""},
		{"below minimum", func(m *Manifest) { m.MinVersion = "1.3.5" }, board, "too_old", "upgrades 1.3.5 or later, this board runs 1.3.2"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := manifest()
			tc.f(&m)
			err := Check(m, tc.t)
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || Reason(err) != tc.reason || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("err %v (reason %s), want reason %s containing %q", err, Reason(err), tc.reason, tc.msg)
			}
		})
	}
}

// TestDescribeAndCheckFile builds a binary with -X main.version, as the
// release build does, describes it, and checks a tampered copy.
func TestDescribeAndCheckFile(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w -X main.version=2.1.0 -X main.commit=abc", "-o", bin, "./testdata/hello")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	m, err := Describe(bin, "", "", now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if m.Version != "2.1.0" || m.Arch != HostArch() || m.Binary != "hello" {
		t.Fatalf("described %+v, want version 2.1.0 on %s", m, HostArch())
	}
	if runtime.GOARCH != "arm" && m.Arch != runtime.GOOS+"/"+runtime.GOARCH {
		t.Errorf("arch %s", m.Arch)
	}
	if err := CheckFile(m, bin); err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(bin)
	tampered := filepath.Join(dir, "tampered")
	data[len(data)/2] ^= 1
	os.WriteFile(tampered, data, 0o755)
	if err := CheckFile(m, tampered); !errors.Is(err, ErrHash) {
		t.Errorf("tampered: %v, want %v", err, ErrHash)
	}
	os.WriteFile(tampered, data[:len(data)-1], 0o755)
	if err := CheckFile(m, tampered); !errors.Is(err, ErrSize) {
		t.Errorf("truncated: %v, want %v", err, ErrSize)
	}
	if m, err := Describe(bin, "3.0.0", "linux/arm/v6", now.Add(time.Hour)); err != nil || m.Version != "3.0.0" || m.Arch != "linux/arm/v6" {
		t.Errorf("overridden: %+v, %v", m, err)
	}
	if _, err := Describe(filepath.Join(dir, "nothing"), "", "", now); err == nil {
		t.Error("a missing binary described")
	}
}

func TestKeyPair(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	id, err := WriteKeyPair(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, PrivateKeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("private key mode %v, %v; want 0600", fi.Mode(), err)
	}
	sk, err := ReadPrivateKey(filepath.Join(dir, PrivateKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	pk, err := ReadPublicKey(filepath.Join(dir, PublicKeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if KeyID(pk) != id || !pk.Equal(sk.Public()) {
		t.Fatal("the key pair does not match")
	}
	if _, err := WriteKeyPair(dir, false); !errors.Is(err, ErrKeyExists) {
		t.Fatalf("second keygen: %v, want %v", err, ErrKeyExists)
	}
	if again, _ := ReadPublicKey(filepath.Join(dir, PublicKeyFile)); !again.Equal(pk) {
		t.Fatal("the refused keygen replaced the key")
	}
	if _, err := ReadPublicKey(filepath.Join(dir, PrivateKeyFile)); err == nil {
		t.Error("a private key read as the public one")
	}
	if id2, err := WriteKeyPair(dir, true); err != nil || id2 == id {
		t.Errorf("--force: %s, %v", id2, err)
	}
}
