package release

import (
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/thermofleet/thermo/internal/atomicfile"
)

// File names keygen writes in its directory.
const (
	PrivateKeyFile = "release.key"
	PublicKeyFile  = "release.pub"
)

// DefaultPublicKey is where the .deb installs the release public key the
// thermostat trusts.
const DefaultPublicKey = "/etc/thermostat/release.pub"

// ErrKeyExists is returned by WriteKeyPair when a key is already there.
var ErrKeyExists = errors.New("a release key exists")

// WriteKeyPair makes a new ed25519 release key in dir (created 0700 if
// missing): release.key (PKCS#8 PEM, 0600) and release.pub (PKIX PEM,
// 0644). It refuses to replace either file unless force: every board in the
// field trusts the old public key and would refuse releases signed by the
// new one. It returns the key's id (KeyID).
func WriteKeyPair(dir string, force bool) (string, error) {
	priv, pub := filepath.Join(dir, PrivateKeyFile), filepath.Join(dir, PublicKeyFile)
	if !force {
		for _, p := range []string{priv, pub} {
			if _, err := os.Stat(p); err == nil {
				return "", fmt.Errorf("%s: %w (use --force to replace it: boards that trust the old key then refuse every release signed with the new one)", p, ErrKeyExists)
			} else if !errors.Is(err, fs.ErrNotExist) {
				return "", err
			}
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("release key: %w", err)
	}
	pk, sk, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("release key: %w", err)
	}
	skDER, err := x509.MarshalPKCS8PrivateKey(sk)
	if err != nil {
		return "", err
	}
	pkDER, err := x509.MarshalPKIXPublicKey(pk)
	if err != nil {
		return "", err
	}
	if err := atomicfile.WriteFile(priv, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: skDER}), 0o600); err != nil {
		return "", fmt.Errorf("release key: %w", err)
	}
	if err := atomicfile.WriteFile(pub, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pkDER}), 0o644); err != nil {
		return "", fmt.Errorf("release key: %w", err)
	}
	return KeyID(pk), nil
}

// KeyID names a public key in manifests and messages: the first 8 bytes of
// the SHA-256 of its raw 32 bytes, in hex.
func KeyID(pk ed25519.PublicKey) string {
	sum := sha256.Sum256(pk)
	return hex.EncodeToString(sum[:8])
}

// ReadPrivateKey reads a release private key written by WriteKeyPair.
func ReadPrivateKey(path string) (ed25519.PrivateKey, error) {
	der, err := readPEM(path, "PRIVATE KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	sk, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, fmt.Errorf("%s: a %T, not an ed25519 release key", path, k)
	}
	return sk, nil
}

// ReadPublicKey reads a release public key (release.pub).
func ReadPublicKey(path string) (ed25519.PublicKey, error) {
	der, err := readPEM(path, "PUBLIC KEY")
	if err != nil {
		return nil, err
	}
	k, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	pk, ok := k.(ed25519.PublicKey)
	if !ok {
		return nil, fmt.Errorf("%s: a %T, not an ed25519 release key", path, k)
	}
	return pk, nil
}

func readPEM(path, typ string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("release key: %w", err)
	}
	b, _ := pem.Decode(data)
	if b == nil || b.Type != typ {
		return nil, fmt.Errorf("%s: no %q PEM block (give release.key to sign, release.pub to a thermostat)", path, typ)
	}
	return b.Bytes, nil
}
