package renew

import (
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/provisioning"
)

// The swap of a renewed key and certificate, two files that must match,
// survives a kill or a power cut at any point: the new pair is first
// written whole beside the old one (NextSuffix), then renamed over it, the
// key first. Recover, run at every start before the pair is read, finishes
// or undoes a swap that was cut short:
//
//	cut during or after writing key.next      key+cert old, key.next        -> remove key.next
//	cut after writing cert.next               old pair, both .next          -> finish: rename both
//	cut after renaming key.next over key      key new, cert old, cert.next  -> finish: rename cert.next
//	cut after renaming cert.next over cert    new pair                      -> nothing to do
//
// Each file is written by atomicfile (whole or absent, synced, directory
// synced), and each rename is synced with its directory.

// NextSuffix marks the new key and certificate while a swap is under way.
const NextSuffix = ".next"

// swap steps, for crash injection in tests.
const (
	stepKeyWritten  = "key-next-written"
	stepCertWritten = "cert-next-written"
	stepKeyRenamed  = "key-renamed"
	stepCertRenamed = "cert-renamed"
)

// errCrash is returned by the test hook to cut a swap short.
var errCrash = errors.New("crash injected")

// crashAt, when set (by tests only), is called after each step; an error
// stops the swap there, as a kill would.
var crashAt func(step string) error

func step(name string) error {
	if crashAt != nil {
		return crashAt(name)
	}
	return nil
}

// Install replaces certFile and keyFile with certPEM and keyPEM, which
// must be a matching pair: the key 0600, the certificate 0644.
func Install(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("install certificate: the new key and certificate do not match: %w", err)
	}
	if err := atomicfile.WriteFile(keyFile+NextSuffix, keyPEM, provisioning.KeyFileMode); err != nil {
		return fmt.Errorf("install certificate: %w", err)
	}
	if err := step(stepKeyWritten); err != nil {
		return err
	}
	if err := atomicfile.WriteFile(certFile+NextSuffix, certPEM, provisioning.CertFileMode); err != nil {
		return fmt.Errorf("install certificate: %w", err)
	}
	if err := step(stepCertWritten); err != nil {
		return err
	}
	if err := rename(keyFile+NextSuffix, keyFile); err != nil {
		return fmt.Errorf("install certificate: %w", err)
	}
	if err := step(stepKeyRenamed); err != nil {
		return err
	}
	if err := rename(certFile+NextSuffix, certFile); err != nil {
		return fmt.Errorf("install certificate: %w", err)
	}
	return step(stepCertRenamed)
}

// Recover finishes or undoes a swap cut short (see above) and returns what
// it did ("" when there was nothing to do). Afterwards certFile and
// keyFile are a matching pair, unless they were not before the swap
// either.
func Recover(certFile, keyFile string) (string, error) {
	keyNext, certNext := keyFile+NextSuffix, certFile+NextSuffix
	hasKeyNext, hasCertNext := exists(keyNext), exists(certNext)
	switch {
	case hasKeyNext && hasCertNext && matches(certNext, keyNext):
		if err := rename(keyNext, keyFile); err != nil {
			return "", fmt.Errorf("recover certificate swap: %w", err)
		}
		if err := rename(certNext, certFile); err != nil {
			return "", fmt.Errorf("recover certificate swap: %w", err)
		}
		return "finished a swap cut short after the new key and certificate were written", nil
	case !hasKeyNext && hasCertNext && matches(certNext, keyFile) && !matches(certFile, keyFile):
		if err := rename(certNext, certFile); err != nil {
			return "", fmt.Errorf("recover certificate swap: %w", err)
		}
		return "finished a swap cut short after the new key was in place", nil
	case hasKeyNext || hasCertNext:
		for _, f := range []string{keyNext, certNext} {
			if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
				return "", fmt.Errorf("recover certificate swap: %w", err)
			}
		}
		return "removed the remains of a swap cut short before the new pair was complete", nil
	}
	return "", nil
}

func matches(certFile, keyFile string) bool {
	_, err := tls.LoadX509KeyPair(certFile, keyFile)
	return err == nil
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// rename renames and syncs the directory, so the rename survives a power cut.
func rename(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(to))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
