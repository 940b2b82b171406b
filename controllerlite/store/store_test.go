package store

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

func replica(vc protocol.Clock, props protocol.Props) *protocol.Replica {
	return &protocol.Replica{Side: protocol.ControllerSide, VC: vc, Props: props, Src: protocol.SrcController}
}

func sample() []Device {
	seen := time.Date(2026, 11, 24, 17, 0, 0, 0, time.UTC)
	return []Device{
		{
			ID: "d1",
			Replica: replica(protocol.Clock{4, 2}, protocol.Props{
				protocol.PropSetpoint: {Val: 21.5, W: protocol.Clock{4, 2}},
				protocol.PropMode:     {Val: "heat", W: protocol.Clock{0, 1}},
			}),
			Owed:      true,
			Online:    true,
			LastSeen:  seen,
			Telemetry: json.RawMessage(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":20.31,"heat":true,"cool":false,"sensor_ok":true}`),
		},
		{ID: "d2", Replica: replica(protocol.Clock{}, protocol.Props{})},
	}
}

func TestPutLoadReopen(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := sample()
	// Written in reverse order: Load sorts.
	if err := s.Put(want[1], want[0]); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(filepath.Join(dir, FileName)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("database file: %v, mode %v", err, fi.Mode())
	}

	s, err = Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", got, want)
	}

	// A later Put replaces the record.
	d := want[0]
	d.Owed = false
	d.Replica = replica(protocol.Clock{5, 2}, d.Replica.Props)
	if err := s.Put(d); err != nil {
		t.Fatal(err)
	}
	got, err = s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got[0].Owed || got[0].Replica.VC != (protocol.Clock{5, 2}) {
		t.Fatalf("after replace: %+v", got[0])
	}
}

func TestPutRefusesBadRecords(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	tests := []struct {
		name string
		dev  Device
		want string
	}{
		{"bad id", Device{ID: "D1", Replica: replica(protocol.Clock{}, nil)}, "invalid id"},
		{"controller id", Device{ID: "controller", Replica: replica(protocol.Clock{}, nil)}, "reserved"},
		{"no replica", Device{ID: "d1"}, "no replica"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// A batch with one bad record stores none of it.
			err := s.Put(Device{ID: "ok", Replica: replica(protocol.Clock{}, nil)}, tc.dev)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Put: %v, want an error with %q", err, tc.want)
			}
			got, err := s.Load()
			if err != nil || len(got) != 0 {
				t.Fatalf("after a refused Put: %+v, %v", got, err)
			}
		})
	}
}

func TestLoadRefusesCorruptRecords(t *testing.T) {
	tests := []struct {
		name, key, val, want string
	}{
		{"not JSON", "d1", `{`, `device "d1"`},
		{"id mismatch", "d1", `{"id":"d2","replica":{"side":0,"vc":[0,0],"props":{}}}`, `record says id "d2"`},
		{"bad value", "d1", `{"id":"d1","replica":{"side":0,"vc":[1,0],"props":{"setpoint_c":{"val":99,"w":[1,0]}}}}`, "out of range"},
		{"stamp beyond clock", "d1", `{"id":"d1","replica":{"side":0,"vc":[1,0],"props":{"mode":{"val":"heat","w":[2,0]}}}}`, "beyond the clock"},
		{"counter over 2^52", "d1", `{"id":"d1","replica":{"side":0,"vc":[4503599627370497,0],"props":{}}}`, "over the limit"},
		{"counter 2^53-1", "d1", `{"id":"d1","replica":{"side":0,"vc":[1,9007199254740991],"props":{}}}`, "over the limit"},
		{"unknown property", "d1", `{"id":"d1","replica":{"side":0,"vc":[1,0],"props":{"fan":{"val":1,"w":[1,0]}}}}`, "unknown property"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			err = s.db.Update(func(tx *bbolt.Tx) error {
				return tx.Bucket(bucketDevices).Put([]byte(tc.key), []byte(tc.val))
			})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.Load(); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Load: %v, want an error with %q", err, tc.want)
			}
		})
	}
}

func TestOpenRefusesNewerSchema(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte("2")) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "incompatible") {
		t.Fatalf("Open: %v", err)
	}
}

func TestOpenLocked(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := Open(dir); err == nil || !strings.Contains(err.Error(), "locked by another process") {
		t.Fatalf("second Open: %v", err)
	}
}

// TestSurvivesKill9: a child process writes records and is killed with
// SIGKILL right after Put returns; every record it acknowledged is there.
func TestSurvivesKill9(t *testing.T) {
	if dir := os.Getenv("STORE_TEST_CHILD_DIR"); dir != "" {
		child(dir)
		return
	}
	testenv.SkipIfCannotReexec(t)
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSurvivesKill9$")
	cmd.Env = append(os.Environ(), "STORE_TEST_CHILD_DIR="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The child prints "put N" after each acknowledged Put; kill it after
	// the tenth, in the middle of its writing.
	acked := 0
	buf := make([]byte, 0, 256)
	tmp := make([]byte, 64)
	for acked < 10 {
		n, err := out.Read(tmp)
		if err != nil {
			t.Fatalf("child output after %d puts: %v", acked, err)
		}
		buf = append(buf, tmp[:n]...)
		acked = strings.Count(string(buf), "\n")
	}
	cmd.Process.Kill()
	cmd.Wait()

	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 {
		t.Fatalf("records: %+v", got)
	}
	if c := got[0].Replica.VC[0]; c < uint64(acked) {
		t.Fatalf("clock %d after %d acknowledged puts: an acknowledged write was lost", c, acked)
	}
}

func child(dir string) {
	s, err := Open(dir)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	for i := uint64(1); ; i++ {
		d := Device{ID: "d1", Replica: replica(protocol.Clock{i, 0}, protocol.Props{protocol.PropSetpoint: {Val: 20.0, W: protocol.Clock{i, 0}}})}
		if err := s.Put(d); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		fmt.Printf("put %d\n", i)
	}
}
