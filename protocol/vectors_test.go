package protocol

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"testing"
)

// vectorStep is one step of testdata/worked-example.json, a copy of the
// conformance vector shipped beside PROTOCOL.md.
type vectorStep struct {
	Step    string          `json:"step"`
	At      string          `json:"at"`
	Op      string          `json:"op"`
	Prop    string          `json:"prop"`
	Val     any             `json:"val"`
	Message json.RawMessage `json:"message"`
	Expect  struct {
		Controller Clock    `json:"controller"`
		Device     Clock    `json:"device"`
		Setpoint   *float64 `json:"setpoint_c"`
		Applied    []string `json:"applied"`
	} `json:"expect"`
}

func loadVector(t *testing.T) []vectorStep {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "worked-example.json"))
	if err != nil {
		t.Fatal(err)
	}
	var v struct{ Steps []vectorStep }
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatalf("parse vector: %v", err)
	}
	if len(v.Steps) == 0 {
		t.Fatal("vector has no steps")
	}
	return v.Steps
}

// TestVectorIsTheSharedOne keeps the copy in testdata identical to the
// contract's vector when the shared folder is beside the checkout.
func TestVectorIsTheSharedOne(t *testing.T) {
	for _, pair := range [][2]string{
		{"../../shared/vectors/worked-example.json", "testdata/worked-example.json"},
		{"../../shared/PROTOCOL.md", "../docs/PROTOCOL.md"},
	} {
		shared, err := os.ReadFile(pair[0])
		if err != nil {
			t.Skipf("shared contract not beside the checkout: %v", err)
		}
		ours, err := os.ReadFile(pair[1])
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(shared, ours) {
			t.Errorf("%s differs from %s: copy the contract again", pair[1], pair[0])
		}
	}
}

// TestWorkedExample replays PROTOCOL.md's worked example step by step with
// the replicas both sides use, asserting every clock, every payload and
// which value stands.
func TestWorkedExample(t *testing.T) {
	ctl := NewReplica(ControllerSide)
	dev := NewReplica(DeviceSide)
	sides := map[string]*Replica{"controller": ctl, "device": dev}
	var sent = map[string]Message{} // payloads each side sent, by step

	for _, s := range loadVector(t) {
		r := sides[s.At]
		if r == nil {
			t.Fatalf("%s: unknown side %q", s.Step, s.At)
		}
		var want Message
		if len(s.Message) > 0 {
			var issues []PropIssue
			var err error
			want, issues, err = DecodeMessage(s.Message)
			if err != nil || len(issues) > 0 {
				t.Fatalf("%s: vector message does not decode: %v %v", s.Step, err, issues)
			}
		}
		src := SrcLocal
		if s.At == "controller" {
			src = SrcController
		}
		switch s.Op {
		case "write":
			if err := r.Write(map[string]any{s.Prop: s.Val}, src); err != nil {
				t.Fatalf("%s: %v", s.Step, err)
			}
		case "send":
			got := r.Send()
			assertMessage(t, s.Step, got, want)
			sent[s.Step] = got
		case "write_and_send":
			got, err := r.WriteAndSend(map[string]any{s.Prop: s.Val}, src)
			if err != nil {
				t.Fatalf("%s: %v", s.Step, err)
			}
			assertMessage(t, s.Step, got, want)
		case "receive":
			// Receive what went over the wire: the encoded payload, decoded.
			payload, err := want.Encode()
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := DecodeMessage(payload)
			if err != nil {
				t.Fatalf("%s: %v", s.Step, err)
			}
			out, err := r.Receive(m)
			if err != nil {
				t.Fatalf("%s: %v", s.Step, err)
			}
			if out.Duplicate {
				t.Errorf("%s: taken for a duplicate", s.Step)
			}
			applied := out.Applied
			if applied == nil {
				applied = []string{}
			}
			if !slices.Equal(applied, s.Expect.Applied) {
				t.Errorf("%s: applied %v, want %v", s.Step, applied, s.Expect.Applied)
			}
		default:
			t.Fatalf("%s: unknown op %q", s.Step, s.Op)
		}
		if ctl.VC != s.Expect.Controller || dev.VC != s.Expect.Device {
			t.Errorf("%s: controller %v device %v, want %v %v", s.Step, ctl.VC, dev.VC, s.Expect.Controller, s.Expect.Device)
		}
		if s.Expect.Setpoint != nil {
			if got, _ := r.Props.Setpoint(); got != *s.Expect.Setpoint {
				t.Errorf("%s: %s setpoint %v, want %v", s.Step, s.At, got, *s.Expect.Setpoint)
			}
		}
	}
	// Both sides end on the re-sent controller value with the same stamp.
	if !reflect.DeepEqual(ctl.Props[PropSetpoint], dev.Props[PropSetpoint]) {
		t.Errorf("sides disagree: controller %v device %v", ctl.Props[PropSetpoint], dev.Props[PropSetpoint])
	}
}

func assertMessage(t *testing.T, step string, got, want Message) {
	t.Helper()
	gb, err := got.Encode()
	if err != nil {
		t.Fatal(err)
	}
	wb, err := want.Encode()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(gb, wb) {
		t.Errorf("%s: sent %s, want %s", step, gb, wb)
	}
}
