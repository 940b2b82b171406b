package provisioning

import (
	"fmt"
	"os"
	"path/filepath"
)

// Modes of the files this package writes.
const (
	KeyFileMode  os.FileMode = 0o600
	CertFileMode os.FileMode = 0o644
)

// writeFileAtomic replaces path with data: a temporary file in the same
// directory is written, given perm, synced and renamed over path, and the
// directory is synced, so readers see the old file or the new one, never a
// part of it, and a key is never readable by others even for a moment.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	// CreateTemp makes the file 0600; set the final mode before any data
	// is in it (Chmod ignores the umask, so 0644 stays 0644).
	if err = f.Chmod(perm); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if d, derr := os.Open(dir); derr == nil {
		serr := d.Sync()
		d.Close()
		if serr != nil {
			return fmt.Errorf("write %s: sync directory: %w", path, serr)
		}
	}
	return nil
}

// WriteCertKey writes a certificate (0644) and its private key (0600)
// atomically, the key first, so a certificate on disk always has its key.
// The directory of each file must exist.
func WriteCertKey(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if err := writeFileAtomic(keyFile, keyPEM, KeyFileMode); err != nil {
		return err
	}
	return writeFileAtomic(certFile, certPEM, CertFileMode)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
