package atomicfile

import (
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestWriteFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		perm os.FileMode
	}{
		{"device.key", 0o600},
		{"device.crt", 0o644},
		{"state.json", 0o600},
	} {
		path := filepath.Join(dir, tc.name)
		for _, data := range []string{"first", "second, longer"} {
			if err := WriteFile(path, []byte(data), tc.perm); err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != data {
				t.Fatalf("%s: %q %v, want %q", tc.name, got, err, data)
			}
			if fi, _ := os.Stat(path); fi.Mode().Perm() != tc.perm {
				t.Errorf("%s: mode %v, want %v", tc.name, fi.Mode().Perm(), tc.perm)
			}
		}
	}
	noLeftovers(t, dir)
}

// A failed write leaves the old file as it was and no temporary file.
func TestFailedWriteChangesNothing(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.json")
	if err := WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("disk full")
	err := Write(path, 0o600, func(w io.Writer) error {
		w.Write([]byte("half of the new"))
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want the writer's", err)
	}
	if got, _ := os.ReadFile(path); string(got) != "old" {
		t.Errorf("contents %q after a failed write", got)
	}
	if err := WriteFile(filepath.Join(dir, "missing", "x"), nil, 0o600); err == nil {
		t.Error("write into a missing directory succeeded")
	}
	noLeftovers(t, dir)
}

func noLeftovers(t *testing.T, dir string) {
	t.Helper()
	es, _ := os.ReadDir(dir)
	for _, e := range es {
		if IsTemp(e.Name()) {
			t.Errorf("leftover %s", e.Name())
		}
	}
}
