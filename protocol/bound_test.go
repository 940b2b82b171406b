package protocol

import (
	"errors"
	"testing"
)

// The bound is the contract's: 2^52 is accepted, one more is not.
func TestCounterBound(t *testing.T) {
	for _, tc := range []struct {
		payload string
		ok      bool
	}{
		{`{"v":1,"vc":[4503599627370496,0],"props":{}}`, true},
		{`{"v":1,"vc":[0,4503599627370496],"props":{}}`, true},
		{`{"v":1,"vc":[4503599627370497,0],"props":{}}`, false},
		{`{"v":1,"vc":[0,4503599627370497],"props":{}}`, false},
	} {
		_, _, err := DecodeMessage([]byte(tc.payload))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.payload, err, tc.ok)
		}
	}
}

// No message a peer may send leaves the receiver unable to count its next
// event: a message that would move the receiver's own counter to the edge is
// refused whole, and the receiver's clock stays as it was.
func TestReceiveKeepsRoomToTick(t *testing.T) {
	for _, tc := range []struct {
		name    string
		side    Side
		local   Clock
		msg     Clock
		refused bool
	}{
		{"device: peer counter at the bound", DeviceSide, Clock{3, 4}, Clock{MaxCounter, 4}, false},
		{"device: own counter pushed to the bound", DeviceSide, Clock{3, 4}, Clock{3, MaxCounter}, true},
		{"device: own counter pushed into the reserve", DeviceSide, Clock{3, 4}, Clock{3, MaxCounter - ownReserve + 1}, true},
		{"device: own counter pushed up, honest", DeviceSide, Clock{3, 4}, Clock{3, 900}, false},
		{"controller: own counter pushed to the bound", ControllerSide, Clock{3, 4}, Clock{MaxCounter, 5}, true},
		{"controller: peer counter at the bound", ControllerSide, Clock{3, 4}, Clock{3, MaxCounter}, false},
		{"controller: own counter echoed", ControllerSide, Clock{MaxCounter - ownReserve, 4}, Clock{MaxCounter - ownReserve, 5}, false},
		{"controller: at the limit", ControllerSide, Clock{MaxCounter, 4}, Clock{MaxCounter, 5}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &Replica{Side: tc.side, VC: tc.local, Props: Props{PropMode: {Val: ModeHeat, W: Clock{1, 1}}}}
			m := Message{V: Version, VC: tc.msg, Props: Props{PropMode: {Val: ModeOff, W: tc.msg}}}
			_, err := r.Receive(m)
			if !tc.refused {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if r.VC[tc.side] > MaxCounter || r.VC.Compare(tc.msg) != After {
					t.Errorf("clock %v after receiving %v", r.VC, tc.msg)
				}
				if _, err := r.Receive(Message{V: Version, VC: Clock{r.VC[0] + 1, r.VC[1] + 1}}); tc.msg[tc.side] < MaxCounter-ownReserve && err != nil {
					t.Errorf("the next message is refused: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrInvalid) || !errors.Is(err, ErrClockExhausted) {
				t.Fatalf("err = %v, want ErrInvalid and ErrClockExhausted", err)
			}
			if r.VC != tc.local || r.Props[PropMode].Val != ModeHeat {
				t.Errorf("refused message changed the replica: %v %v", r.VC, r.Props)
			}
		})
	}
}

// A write at the limit is refused with a clear error and changes nothing.
func TestWriteAtTheLimit(t *testing.T) {
	r := &Replica{Side: ControllerSide, VC: Clock{MaxCounter, 4}, Props: Props{}}
	if _, err := r.WriteAndSend(map[string]any{PropMode: ModeHeat}, SrcController); !errors.Is(err, ErrClockExhausted) {
		t.Fatalf("WriteAndSend err = %v, want ErrClockExhausted", err)
	}
	if err := r.Write(map[string]any{PropMode: ModeHeat}, SrcController); !errors.Is(err, ErrClockExhausted) {
		t.Fatalf("Write err = %v, want ErrClockExhausted", err)
	}
	if r.VC != (Clock{MaxCounter, 4}) || len(r.Props) != 0 {
		t.Errorf("refused write changed the replica: %v %v", r.VC, r.Props)
	}
	if m := r.Send(); m.VC[0] != MaxCounter {
		t.Errorf("send at the limit carries %v", m.VC)
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		r    Replica
		ok   bool
	}{
		{"fine", Replica{VC: Clock{2, 3}, Props: Props{PropSetpoint: {Val: 21.5, W: Clock{2, 1}}}}, true},
		{"counter over the bound", Replica{VC: Clock{MaxCounter + 1, 3}}, false},
		{"stamp beyond clock", Replica{VC: Clock{2, 3}, Props: Props{PropMode: {Val: ModeHeat, W: Clock{3, 1}}}}, false},
		{"bad value", Replica{VC: Clock{2, 3}, Props: Props{PropMode: {Val: "turbo", W: Clock{1, 1}}}}, false},
		{"not canonical", Replica{VC: Clock{2, 3}, Props: Props{PropSetpoint: {Val: 21.55, W: Clock{1, 1}}}}, false},
	} {
		if err := tc.r.Validate(); (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}
