package state

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/protocol"
)

func sample() protocol.DeviceState {
	return protocol.DeviceState{Replica: &protocol.Replica{
		Side: protocol.DeviceSide,
		VC:   protocol.Clock{4, 7},
		Props: protocol.Props{
			protocol.PropSetpoint: {Val: 21.5, W: protocol.Clock{4, 2}},
			protocol.PropMode:     {Val: "heat", W: protocol.Clock{0, 7}},
		},
		Src: protocol.SrcLocal,
	}}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	rejoin := sample()
	rejoin.Rejoining = true
	rejoin.Pending = map[string]any{protocol.PropSetpoint: 19.0}
	rejoin.PendingSrc = protocol.SrcButton
	for name, st := range map[string]protocol.DeviceState{"plain": sample(), "rejoining with pending": rejoin} {
		t.Run(name, func(t *testing.T) {
			s, err := Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if _, err := s.Load(); !errors.Is(err, ErrNoState) {
				t.Fatalf("Load of an empty dir = %v, want ErrNoState", err)
			}
			if err := s.Save(st); err != nil {
				t.Fatal(err)
			}
			got, err := s.Load()
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, st) {
				t.Fatalf("Load = %+v, want %+v", got, st)
			}
			fi, err := os.Stat(s.Path())
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Errorf("state file mode %v, want 0600", fi.Mode().Perm())
			}
		})
	}
}

func TestSaveReplaces(t *testing.T) {
	s, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	st := sample()
	for i := range 5 {
		st.Replica.VC[protocol.DeviceIdx]++
		if err := s.Save(st); err != nil {
			t.Fatalf("save %d: %v", i, err)
		}
	}
	got, err := s.Load()
	if err != nil {
		t.Fatal(err)
	}
	if got.Replica.VC != st.Replica.VC {
		t.Fatalf("clock %v, want %v", got.Replica.VC, st.Replica.VC)
	}
	entries, _ := os.ReadDir(s.Dir())
	for _, e := range entries {
		if e.Name() != FileName && e.Name() != lockName {
			t.Errorf("stray file %s in the state dir", e.Name())
		}
	}
}

func TestCorruptIsAnErrorWithInstructions(t *testing.T) {
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, content, reason string
	}{
		{"empty", "", "not a state file"},
		{"garbage", "\x00\x01binary", "not a state file"},
		{"truncated", string(good[:len(good)/2]), "not a state file"},
		{"other format", `{"format":2,"device":{"replica":{"side":1,"vc":[0,1],"props":{}}}}`, "format 2"},
		{"no replica", `{"format":1,"device":{}}`, "no replica"},
		{"controller side", `{"format":1,"device":{"replica":{"side":0,"vc":[0,1],"props":{}}}}`, "side"},
		{"setpoint out of range", `{"format":1,"device":{"replica":{"side":1,"vc":[0,1],"props":{"setpoint_c":{"val":99,"w":[0,1]}}}}}`, "out of range"},
		{"unknown property", `{"format":1,"device":{"replica":{"side":1,"vc":[0,1],"props":{"fan_speed":{"val":1,"w":[0,1]}}}}}`, "unknown property"},
		{"stamp beyond clock", `{"format":1,"device":{"replica":{"side":1,"vc":[0,1],"props":{"mode":{"val":"heat","w":[0,5]}}}}}`, "beyond the clock"},
		{"counter over 2^52", `{"format":1,"device":{"replica":{"side":1,"vc":[0,4503599627370497],"props":{}}}}`, "over the limit"},
		{"counter 2^53-1", `{"format":1,"device":{"replica":{"side":1,"vc":[9007199254740991,1],"props":{}}}}`, "over the limit"},
		{"negative clock", `{"format":1,"device":{"replica":{"side":1,"vc":[0,-1],"props":{}}}}`, "not a state file"},
		{"unknown field", `{"format":1,"device":{"replica":{"side":1,"vc":[0,1],"props":{}}},"extra":true}`, "not a state file"},
		{"trailing data", string(good) + "{}", "after the state object"},
		{"pending outside rejoin", `{"format":1,"device":{"replica":{"side":1,"vc":[0,1],"props":{}},"pending":{"mode":"heat"}}}`, "pending"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, FileName), []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			s, err := Open(dir)
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			_, err = s.Load()
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Load = %v, want ErrCorrupt", err)
			}
			msg := err.Error()
			for _, want := range []string{tc.reason, "mv " + s.Path(), "rejoins"} {
				if !strings.Contains(msg, want) {
					t.Errorf("error %q does not say %q", msg, want)
				}
			}
			// The corrupt file is left for the user to inspect.
			if b, _ := os.ReadFile(s.Path()); string(b) != tc.content {
				t.Error("Load changed the corrupt file")
			}
		})
	}
}

func TestOpenLocksTheDirectory(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Open(dir); !errors.Is(err, ErrLocked) {
		t.Fatalf("second Open = %v, want ErrLocked", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(dir)
	if err != nil {
		t.Fatalf("Open after Close: %v", err)
	}
	s2.Close()
}

func TestOpenRemovesLeftoverTempFiles(t *testing.T) {
	dir := t.TempDir()
	good, err := Encode(sample())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, FileName), good, 0o600); err != nil {
		t.Fatal(err)
	}
	// A crash between writing the temp file and the rename.
	leftover := filepath.Join(dir, tmpPrefix+"123")
	if err := os.WriteFile(leftover, good[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover temp file still there: %v", err)
	}
	if _, err := s.Load(); err != nil {
		t.Errorf("the old state must stand: %v", err)
	}
}

func TestEncodeRefusesInvalidState(t *testing.T) {
	st := sample()
	st.Replica.Props[protocol.PropMode] = protocol.Prop{Val: "warm", W: protocol.Clock{0, 1}}
	if _, err := Encode(st); err == nil {
		t.Fatal("Encode accepted an invalid mode")
	}
}
