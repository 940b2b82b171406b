package testenv

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// Mounts for tests of what a full or read-only disk does to a program. They
// need the right to mount (root here and in CI); where it is missing the
// test is skipped with the reason, not failed.

// mount runs mount(8) with args, skipping t when mounting is not allowed.
func mount(t testing.TB, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("mount"); err != nil {
		t.Skipf("testenv: no mount command: %v", err)
	}
	out, err := exec.Command("mount", args...).CombinedOutput()
	if err != nil {
		t.Skipf("testenv: mounting is not allowed here (mount %s: %v: %s)", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
}

// unmountAtCleanup unmounts dir when the test ends, after the test's own
// cleanups registered later (such as killing a process that uses it). A
// mount still busy is detached lazily rather than left behind.
func unmountAtCleanup(t testing.TB, dir string) {
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			if out2, err2 := exec.Command("umount", "-l", dir).CombinedOutput(); err2 != nil {
				t.Errorf("testenv: umount %s: %v: %s; umount -l: %v: %s", dir, err, out, err2, out2)
			}
		}
	})
}

// MountTmpfs mounts a tmpfs of size bytes on dir, creating dir first, and
// unmounts it when the test ends: a small disk to fill (FillDisk).
func MountTmpfs(t testing.TB, dir string, size int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatalf("testenv: %v", err)
	}
	mount(t, "-t", "tmpfs", "-o", "size="+strconv.Itoa(size)+",mode=0700", "tmpfs", dir)
	unmountAtCleanup(t, dir)
}

// FillDisk writes a file in dir until its file system has no space left,
// and returns the file's path: removing it frees the space.
func FillDisk(t testing.TB, dir string) string {
	t.Helper()
	f, err := os.CreateTemp(dir, "filler-")
	if err != nil {
		t.Fatalf("testenv: fill %s: %v", dir, err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
				return f.Name()
			}
			t.Fatalf("testenv: fill %s: %v", dir, err)
		}
	}
}

// BindMount mounts src on dst (both created if missing) and unmounts it
// when the test ends. The returned function makes the mount read-only
// (ro true) or writable again, as `mount -o remount,ro,bind` does: only
// this view of the files changes, not src.
func BindMount(t testing.TB, src, dst string) (setReadOnly func(ro bool)) {
	t.Helper()
	for _, d := range []string{src, dst} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatalf("testenv: %v", err)
		}
	}
	src, dst = filepath.Clean(src), filepath.Clean(dst)
	mount(t, "--bind", src, dst)
	unmountAtCleanup(t, dst)
	return func(ro bool) {
		t.Helper()
		mode := "rw"
		if ro {
			mode = "ro"
		}
		if out, err := exec.Command("mount", "-o", "remount,"+mode+",bind", dst).CombinedOutput(); err != nil {
			t.Fatalf("testenv: remount %s %s: %v: %s", dst, mode, err, bytes.TrimSpace(out))
		}
	}
}
