package provisioning

import (
	"os"

	"github.com/thermofleet/thermo/internal/atomicfile"
)

// Modes of the files this package writes.
const (
	KeyFileMode  os.FileMode = 0o600
	CertFileMode os.FileMode = 0o644
)

// WriteCertKey writes a certificate (0644) and its private key (0600)
// atomically, the key first, so a certificate on disk always has its key.
// The directory of each file must exist.
func WriteCertKey(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if err := atomicfile.WriteFile(keyFile, keyPEM, KeyFileMode); err != nil {
		return err
	}
	return atomicfile.WriteFile(certFile, certPEM, CertFileMode)
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}
