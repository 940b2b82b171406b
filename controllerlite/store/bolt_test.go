package store

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/protocol"
)

// fleetFile writes a store of n devices and returns its bytes, the page
// size, and which pages are in use (meta pages excluded): branch, leaf
// and freelist pages.
func fleetFile(t *testing.T, n int) (data []byte, pageSize int, live []int) {
	t.Helper()
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		d := Device{ID: fmt.Sprintf("d%03d", i), Online: i%2 == 0,
			Replica:   replica(protocol.Clock{uint64(i), 1}, protocol.Props{protocol.PropSetpoint: {Val: 20.5, W: protocol.Clock{uint64(i), 0}}}),
			Telemetry: []byte(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":20.31,"heat":true,"cool":false,"sensor_ok":true}`)}
		if err := s.Put(d); err != nil {
			t.Fatal(err)
		}
	}
	pageSize = s.db.Info().PageSize
	err = s.db.View(func(tx *bbolt.Tx) error {
		for id := 2; int64(id*pageSize) < tx.Size(); id++ {
			info, err := tx.Page(id)
			if err != nil {
				return err
			}
			if info != nil && (info.Type == "branch" || info.Type == "leaf" || info.Type == "freelist") {
				for o := 0; o <= info.OverflowCount; o++ {
					live = append(live, id+o)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if data, err = os.ReadFile(filepath.Join(dir, FileName)); err != nil {
		t.Fatal(err)
	}
	if len(live) < 5 {
		t.Fatalf("only %d live pages: the test needs a tree with branch pages", len(live))
	}
	return data, pageSize, live
}

// Ways garbage lands in a page.
var garbageKinds = []struct {
	name    string
	spoil   func(page []byte, rng *rand.Rand)
	mustErr bool // bbolt must see it on every live page
}{
	{"whole page", func(p []byte, rng *rand.Rand) { rng.Read(p) }, true},
	{"after an intact header", func(p []byte, rng *rand.Rand) { rng.Read(p[16:]) }, false},
	{"flipped bits", func(p []byte, rng *rand.Rand) {
		for i := 0; i < 16; i++ {
			p[rng.Intn(len(p))] ^= 1 << rng.Intn(8)
		}
	}, false},
	{"zeroed", func(p []byte, _ *rand.Rand) { clear(p) }, true},
}

// TestOpenCorrupt: garbage in any live page of controller.db is an error
// from Open (or, in a value bbolt cannot judge, from Load) that wraps
// ErrCorrupt, names the file and says how to recover: never a panic, which
// is what bbolt alone gives for most of these files.
func TestOpenCorrupt(t *testing.T) {
	orig, pageSize, live := fleetFile(t, 400)
	for _, kind := range garbageKinds {
		t.Run(kind.name, func(t *testing.T) {
			detected := 0
			for _, pg := range live {
				rng := rand.New(rand.NewSource(int64(pg)))
				data := append([]byte(nil), orig...)
				kind.spoil(data[pg*pageSize:(pg+1)*pageSize], rng)
				dir := t.TempDir()
				path := filepath.Join(dir, FileName)
				if err := os.WriteFile(path, data, 0o600); err != nil {
					t.Fatal(err)
				}
				err := openAndLoad(dir)
				if err == nil {
					if kind.mustErr {
						t.Errorf("page %d: garbage not detected", pg)
					}
					continue
				}
				detected++
				if !errors.Is(err, ErrCorrupt) {
					t.Errorf("page %d: %v, want ErrCorrupt", pg, err)
				}
				for _, want := range []string{path, "mv " + path + " " + path + ".corrupt", CureController} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("page %d: error lacks %q:\n%v", pg, want, err)
					}
				}
			}
			t.Logf("%d of %d live pages spoilt %s: detected", detected, len(live), kind.name)
		})
	}
}

// TestOpenGarbageFile: a file of garbage (meta pages included) is refused
// as corrupt, not as some other failure.
func TestOpenGarbageFile(t *testing.T) {
	for _, size := range []int{100, 4096, 64 << 10} {
		dir := t.TempDir()
		garbage := make([]byte, size)
		rand.New(rand.NewSource(int64(size))).Read(garbage)
		if err := os.WriteFile(filepath.Join(dir, FileName), garbage, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := openAndLoad(dir); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%d bytes of garbage: %v, want ErrCorrupt", size, err)
		}
	}
}

// openAndLoad opens the store in dir and loads it.
func openAndLoad(dir string) error {
	s, err := Open(dir)
	if err != nil {
		return err
	}
	defer s.Close()
	_, err = s.Load()
	return err
}

// TestCheckFile: the check the embedded broker runs on its own store
// before mochi opens it.
func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	if err := CheckFile(filepath.Join(dir, "none.db"), CureBroker); err != nil {
		t.Errorf("missing file: %v", err)
	}
	empty := filepath.Join(dir, "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(empty, CureBroker); err != nil {
		t.Errorf("empty file: %v", err)
	}

	orig, pageSize, live := fleetFile(t, 400)
	good := filepath.Join(dir, "good.db")
	if err := os.WriteFile(good, orig, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(good, CureBroker); err != nil {
		t.Errorf("sound file: %v", err)
	}
	before, _ := os.ReadFile(good)
	if string(before) != string(orig) {
		t.Error("CheckFile changed a sound file")
	}
	for _, pg := range live {
		data := append([]byte(nil), orig...)
		rand.New(rand.NewSource(int64(pg))).Read(data[pg*pageSize : (pg+1)*pageSize])
		bad := filepath.Join(dir, fmt.Sprintf("bad%d.db", pg))
		if err := os.WriteFile(bad, data, 0o600); err != nil {
			t.Fatal(err)
		}
		err := CheckFile(bad, CureBroker)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), CureBroker) {
			t.Errorf("page %d spoilt: %v, want ErrCorrupt naming the file and the cure", pg, err)
		}
	}
}

// TestOpenStopped: a walk stopped by its context ends with the context's
// error, not ErrCorrupt, and leaves the file closed: it opens again. The
// fleet is larger than ctxEvery entries, so the walk looks at its context
// midway as well as at the end.
func TestOpenStopped(t *testing.T) {
	data, _, _ := fleetFile(t, 2*ctxEvery)
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if db, err := OpenVersioned(ctx, path, CureController, schemaVersion, bucketDevices); !errors.Is(err, context.Canceled) || errors.Is(err, ErrCorrupt) {
		if db != nil {
			db.Close()
		}
		t.Fatalf("OpenVersioned with its context done: %v, want context.Canceled", err)
	}
	db, err := OpenVersioned(context.Background(), path, CureController, schemaVersion, bucketDevices)
	if err != nil {
		t.Fatalf("open again: %v", err)
	}
	db.Close()
}
