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
			_, m, _ := d.ReceiveCommand(mustMsg(t, retainedCmd), true)
			return m
		}, true, Clock{6, 8}, 17},
		{"own retained event ends the wait", func(t *testing.T, d *Device) *Message {
			d.Connect()
			_, m, _ := d.ReceiveOwnEvent(mustMsg(t, oldEvent))
			return m
		}, false, Clock{5, 11}, 19.5},
		{"live command ends the wait", func(t *testing.T, d *Device) *Message {
			d.Connect()
			_, m, _ := d.ReceiveCommand(mustMsg(t, greeting), false)
			return m
		}, false, Clock{8, 11}, 20},
		{"timeout ends the wait", func(t *testing.T, d *Device) *Message { d.Connect(); return d.SyncTimeout() }, false, Clock{0, 1}, 20},
		{"a write made meanwhile is stamped after the merge", func(t *testing.T, d *Device) *Message {
			d.Connect()
			if m, err := d.LocalWrite(map[string]any{PropSetpoint: 23.0}, SrcButton); m != nil || err != nil {
				t.Fatalf("write while rejoining sent %v, %v", m, err)
			}
			d.ReceiveCommand(mustMsg(t, retainedCmd), true)
			_, m, _ := d.ReceiveOwnEvent(mustMsg(t, oldEvent))
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
	if _, e, _ := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[3,0],"props":{"mode":{"val":"off","w":[3,0]}}}`), false); e != nil {
		t.Errorf("discarded command answered with %v", e)
	}
	if _, e, _ := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[5,6],"props":{"mode":{"val":"off","w":[5,6]}}}`), false); e == nil || e.Props[PropMode].Val != ModeOff {
		t.Errorf("applied command answered with %v", e)
	}
}

// TestUnconfirmedAfterTimeout: a rejoin that timed out having heard nothing
// restarts the clock low; a write made then may be taken for a duplicate
// by a controller that counted more of the device's events. The first live
// Command must not undo it but stamp it again beyond the controller's clock.
func TestUnconfirmedAfterTimeout(t *testing.T) {
	d, err := NewDevice(map[string]any{PropSetpoint: 20.0, PropMode: ModeOff})
	if err != nil {
		t.Fatal(err)
	}
	d.Connect()
	if m := d.SyncTimeout(); m == nil || m.VC != (Clock{0, 1}) {
		t.Fatalf("timeout sent %v", m)
	}
	m, err := d.LocalWrite(map[string]any{PropSetpoint: 30.0}, SrcLocal)
	if err != nil || m == nil || m.Props[PropSetpoint].W != (Clock{0, 2}) {
		t.Fatalf("write after timeout: %v %v", m, err)
	}
	// A retained Command from before: its values dominate the device's
	// stamps by the clocks, but the person's write stands.
	out, e, _ := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[6,9],"props":{"setpoint_c":{"val":22.0,"w":[6,9]},"mode":{"val":"heat","w":[5,8]}}}`), true)
	if sp := d.Effective()[PropSetpoint]; sp != 30.0 {
		t.Fatalf("retained command undid the write: setpoint %v (%+v)", sp, out)
	}
	if d.Effective()[PropMode] != ModeHeat {
		t.Errorf("mode %v: properties the device did not write are taken as usual", d.Effective()[PropMode])
	}
	if e == nil {
		t.Errorf("applying the mode sent no event")
	}
	// The controller's greeting: live, from a clock that counted 9 device
	// events. The write is stamped again after the merge and sent.
	out, e, _ = d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[7,9],"props":{"setpoint_c":{"val":22.0,"w":[6,9]},"mode":{"val":"heat","w":[5,8]}}}`), false)
	if e == nil {
		t.Fatal("greeting ended nothing")
	}
	w := e.Props[PropSetpoint].W
	if e.Props[PropSetpoint].Val != 30.0 || !Supersedes(w, Clock{7, 9}) || w.Compare(Clock{7, 9}) != After {
		t.Fatalf("after the greeting setpoint %v stamped %v, want 30 stamped beyond [7,9]", e.Props[PropSetpoint].Val, w)
	}
	if d.State().Unconfirmed {
		t.Error("still unconfirmed after a live command")
	}
	// From now on commands apply as usual.
	if _, e, _ := d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[9,14],"props":{"setpoint_c":{"val":19.0,"w":[9,14]}}}`), false); e == nil || d.Effective()[PropSetpoint] != 19.0 {
		t.Fatalf("later command not applied: %v", d.Effective())
	}
}

// TestControllerResyncsWhenBehind: an Event that counts more controller
// events than the controller remembers (its store lost) gets a Command
// from the merged clock in answer.
func TestControllerResyncsWhenBehind(t *testing.T) {
	c := NewController(nil)
	c.Ready()
	c.Seen("d1")
	if _, m, _ := c.ReceiveEvent("d1", mustMsg(t, `{"v":1,"vc":[0,3],"props":{"mode":{"val":"heat","w":[0,2]}}}`)); m != nil {
		t.Fatalf("ordinary event answered with %v", m)
	}
	out, m, _ := c.ReceiveEvent("d1", mustMsg(t, `{"v":1,"vc":[14,5],"props":{"mode":{"val":"heat","w":[0,2]}}}`))
	if !out.OwnBehind || m == nil || !(Clock{14, 5}).LessEq(m.VC) || m.VC[ControllerIdx] <= 14 {
		t.Fatalf("behind: outcome %+v, answer %v", out, m)
	}
}

// TestDeviceRollback: a device returned to a state it saved has that
// state again, not a shared copy of it, and stays online: its next local
// write is sent at once.
func TestDeviceRollback(t *testing.T) {
	d, err := NewDevice(map[string]any{PropSetpoint: 20.0, PropMode: "off"})
	if err != nil {
		t.Fatal(err)
	}
	d.Connect()
	d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[1,0],"props":{},"src":"controller"}`), false) // live: ends the rejoin
	saved := d.State()

	for _, tc := range []struct {
		name   string
		change func(t *testing.T)
	}{
		{"local write", func(t *testing.T) {
			if _, err := d.LocalWrite(map[string]any{PropSetpoint: 25.0}, SrcLocal); err != nil {
				t.Fatal(err)
			}
		}},
		{"command", func(t *testing.T) {
			d.ReceiveCommand(mustMsg(t, `{"v":1,"vc":[9,0],"props":{"mode":{"val":"heat","w":[9,0]}},"src":"controller"}`), true)
		}},
		{"connect event", func(t *testing.T) { d.Connect() }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.change(t)
			if d.Clock() == saved.Replica.VC {
				t.Fatal("the change did not move the clock")
			}
			d.Rollback(saved)
			if d.Clock() != saved.Replica.VC || d.Props()[PropSetpoint].Val != 20.0 || d.Props()[PropMode].Val != "off" {
				t.Fatalf("after rollback: clock %v props %v, want %v %v", d.Clock(), d.Props(), saved.Replica.VC, saved.Replica.Props)
			}
			m, err := d.LocalWrite(map[string]any{PropMode: "cool"}, SrcLocal)
			if err != nil || m == nil {
				t.Fatalf("local write after rollback = %v, %v; want it sent at once (still online)", m, err)
			}
			if saved.Replica.Props[PropMode].Val != "off" {
				t.Fatal("the rolled-back device shares its state with the saved copy")
			}
			d.Rollback(saved)
		})
	}
}
