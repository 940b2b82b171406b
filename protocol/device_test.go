package protocol

import "testing"

func mustMsg(t *testing.T, payload string) Message {
	t.Helper()
	m, issues, err := DecodeMessage([]byte(payload))
	if err != nil || len(issues) > 0 {
		t.Fatalf("decode %s: %v %v", payload, err, issues)
	}
	return m
}

// TestDeviceRejoin walks the "rejoining after lost state" rules of
// PROTOCOL.md: what ends the wait, what does not, and how a write made
// meanwhile is stamped.
func TestDeviceRejoin(t *testing.T) {
	oldEvent := `{"v":1,"vc":[5,9],"props":{"setpoint_c":{"val":19.5,"w":[3,8]},"mode":{"val":"heat","w":[0,2]}},"src":"button"}`
	retainedCmd := `{"v":1,"vc":[6,7],"props":{"setpoint_c":{"val":17.0,"w":[6,7]}},"src":"controller"}`
	greeting := `{"v":1,"vc":[8,9],"props":{},"src":"controller"}`
	for _, tc := range []struct {
		name    string
		steps   func(t *testing.T, d *Device) *Message
		waiting bool
		clock   Clock
		sp      float64
	}{
		{"connect alone keeps waiting", func(t *testing.T, d *Device) *Message { return d.Connect() }, true, Clock{0, 0}, 20},
		{"retained command merges but keeps waiting", func(t *testing.T, d *Device) *Message {
			d.Connect()
			_, m := d.ReceiveCommand(mustMsg(t, retainedCmd), true)
			return m
		}, true, Clock{6, 8}, 17},
		{"own retained event ends the wait", func(t *testing.T, d *Device) *Message {
			d.Connect()
			_, m := d.ReceiveOwnEvent(mustMsg(t, oldEvent))
			return m
		}, false, Clock{5, 11}, 19.5},
		{"live command ends the wait", func(t *testing.T, d *Device) *Message {
			d.Connect()
			_, m := d.ReceiveCommand(mustMsg(t, greeting), false)
			return m
		}, false, Clock{8, 11}, 20},
		{"timeout ends the wait", func(t *testing.T, d *Device) *Message { d.Connect(); return d.SyncTimeout() }, false, Clock{0, 1}, 20},
		{"a write made meanwhile is stamped after the merge", func(t *testing.T, d *Device) *Message {
			d.Connect()
			if m, err := d.LocalWrite(map[string]any{PropSetpoint: 23.0}, SrcButton); m != nil || err != nil {
				t.Fatalf("write while rejoining sent %v, %v", m, err)
			}
			d.ReceiveCommand(mustMsg(t, retainedCmd), true)
			_, m := d.ReceiveOwnEvent(mustMsg(t, oldEvent))
			return m
		}, false, Clock{6, 12}, 23},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, err := NewDevice(map[string]any{PropSetpoint: 20.0, PropMode: ModeOff})
			if err != nil {
				t.Fatal(err)
			}
			m := tc.steps(t, d)
			if d.Rejoining() != tc.waiting {
				t.Errorf("rejoining = %v, want %v", d.Rejoining(), tc.waiting)
			}
			if tc.waiting && m != nil {
				t.Errorf("sent %v while rejoining", m)
			}
			if !tc.waiting && (m == nil || m.VC != d.Clock()) {
				t.Errorf("end of the wait sent %v, want an Event at %v", m, d.Clock())
			}
			if d.Clock() != tc.clock {
				t.Errorf("clock %v, want %v", d.Clock(), tc.clock)
			}
			if sp := d.Effective()[PropSetpoint]; sp != tc.sp {
				t.Errorf("setpoint %v, want %v", sp, tc.sp)
			}
			if !tc.waiting && m != nil {
				// Whatever the device sends next supersedes every stamp it merged.
				for name, p := range m.Props {
					if !p.W.LessEq(m.VC) {
						t.Errorf("%s stamp %v beyond clock %v", name, p.W, m.VC)
					}
				}
			}
		})
	}
}

// TestDeviceOfflineWrite: a write made offline waits (own += 1) and goes out
// with the Event sent on reconnect (own += 1).
func TestDeviceOfflineWrite(t *testing.T) {
	d := RestoreDevice(DeviceState{Replica: &Replica{VC: Clock{2, 3}, Props: Props{PropMode: {Val: ModeHeat, W: Clock{2, 1}}}}})
	if m, err := d.LocalWrite(map[string]any{PropSetpoint: 21}, SrcLocal); m != nil || err != nil {
		t.Fatalf("offline write sent %v %v", m, err)
	}
	if d.Clock() != (Clock{2, 4}) {
		t.Fatalf("clock %v after waiting write", d.Clock())
	}
	m := d.Connect()
	if m == nil || m.VC != (Clock{2, 5}) || m.Props[PropSetpoint].W != (Clock{2, 4}) || m.Src != SrcLocal {
		t.Fatalf("reconnect Event %+v", m)
	}
	// Online, write and send are one event.
	m, err := d.LocalWrite(map[string]any{PropMode: ModeCool}, SrcButton)
	if err != nil || m == nil || m.VC != (Clock{2, 6}) || m.Props[PropMode].W != (Clock{2, 6}) {
		t.Fatalf("online write sent %+v %v", m, err)
	}
	if _, err := d.LocalWrite(map[string]any{PropSetpoint: 50}, SrcButton); err == nil {
		t.Fatal("out-of-range write accepted")
	}
	if d.Clock() != (Clock{2, 6}) {
		t.Fatalf("a refused write moved the clock to %v", d.Clock())
	}
	// A command that changes nothing sends nothing; one that applies does.
	if _, e := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[3,0],"props":{"mode":{"val":"off","w":[3,0]}}}`), false); e != nil {
		t.Errorf("discarded command answered with %v", e)
	}
	if _, e := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[5,6],"props":{"mode":{"val":"off","w":[5,6]}}}`), false); e == nil || e.Props[PropMode].Val != ModeOff {
		t.Errorf("applied command answered with %v", e)
	}
}
