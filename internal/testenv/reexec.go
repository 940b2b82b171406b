package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// SkipIfCannotReexec skips a test that runs its own test binary again as a
// child process (to kill -9 it, say) where that is impossible: under
// `make test-arm` the test binary is an ARM binary run through qemu-arm by
// `go test -exec`, and without binfmt nothing here can start it directly.
func SkipIfCannotReexec(t testing.TB) {
	t.Helper()
	if out, err := exec.Command(os.Args[0], "-test.run=^$").CombinedOutput(); err != nil {
		t.Skipf("cannot run the test binary as a child (%v: %s): under an emulator?", err, out)
	}
}
