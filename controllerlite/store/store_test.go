package store

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"go.etcd.io/bbolt"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

func replica(vc protocol.Clock, props protocol.Props) *protocol.Replica {
	return &protocol.Replica{Side: protocol.ControllerSide, VC: vc, Props: props, Src: protocol.SrcController}
}

// TestContract (contract_test.go) runs what every store must do; these are
// what only the bbolt file does.

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
