package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestDecodeMessageRejectsWhole(t *testing.T) {
	big := `{"v":1,"vc":[1,0],"props":{},"pad":"` + strings.Repeat("x", MaxPayload) + `"}`
	for _, tc := range []struct {
		name, payload, reason string
	}{
		{"not json", `{"v":1,`, "not a JSON object"},
		{"array", `[1,2]`, "not a JSON object"},
		{"null", `null`, "not a JSON object"},
		{"two objects", `{"v":1,"vc":[1,0]}{}`, "data after"},
		{"too large", big, "over the 4096 byte limit"},
		{"no v", `{"vc":[1,0],"props":{}}`, "no v"},
		{"other v", `{"v":2,"vc":[1,0],"props":{}}`, "v is 2"},
		{"v string", `{"v":"1","vc":[1,0],"props":{}}`, "v is"},
		{"v float", `{"v":1.0,"vc":[1,0],"props":{}}`, "v is"},
		{"no vc", `{"v":1,"props":{}}`, "no vc"},
		{"vc float", `{"v":1,"vc":[2.0,0],"props":{}}`, "not a non-negative integer"},
		{"vc exponent", `{"v":1,"vc":[2e0,0],"props":{}}`, "not a non-negative integer"},
		{"vc negative", `{"v":1,"vc":[-1,0],"props":{}}`, "not a non-negative integer"},
		{"vc three", `{"v":1,"vc":[1,0,0],"props":{}}`, "3 elements"},
		{"vc one", `{"v":1,"vc":[1],"props":{}}`, "1 elements"},
		{"vc string", `{"v":1,"vc":["1",0],"props":{}}`, "not a non-negative integer"},
		{"vc object", `{"v":1,"vc":{"c":1},"props":{}}`, "not an array"},
		{"vc null", `{"v":1,"vc":null,"props":{}}`, "not an array"},
		{"vc huge", `{"v":1,"vc":[9007199254740992,0],"props":{}}`, "over the largest counter"},
		{"vc 2^53-1 device", `{"v":1,"vc":[0,9007199254740991],"props":{}}`, "over the largest counter"},
		{"vc 2^53-1 controller", `{"v":1,"vc":[9007199254740991,4],"props":{}}`, "over the largest counter"},
		{"vc 2^52+1", `{"v":1,"vc":[4503599627370497,0],"props":{}}`, "over the largest counter"},
		{"vc leading zero", `{"v":1,"vc":[01,0],"props":{}}`, "not a JSON object"},
		{"props array", `{"v":1,"vc":[1,0],"props":[]}`, "props is not an object"},
		{"props null", `{"v":1,"vc":[1,0],"props":null}`, "props is not an object"},
		{"props string", `{"v":1,"vc":[1,0],"props":"x"}`, "props is not an object"},
		{"bad utf8", "{\"v\":1,\"vc\":[1,0],\"src\":\"\xff\"}", "not UTF-8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := DecodeMessage([]byte(tc.payload))
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("err = %v, want ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.reason) {
				t.Errorf("err = %q, want it to say %q", err, tc.reason)
			}
		})
	}
}

func TestDecodeMessageRejectsPropertyAlone(t *testing.T) {
	for _, tc := range []struct {
		name, props string
		reason      string
		unknown     bool
	}{
		{"setpoint too low", `"setpoint_c":{"val":4.9,"w":[1,0]}`, "out of range", false},
		{"setpoint too high", `"setpoint_c":{"val":35.1,"w":[1,0]}`, "out of range", false},
		{"setpoint string", `"setpoint_c":{"val":"21","w":[1,0]}`, "must be a number", false},
		{"setpoint null", `"setpoint_c":{"val":null,"w":[1,0]}`, "must be a number, got null", false},
		// Beyond float64: a number out of range, not "must be a number, got json.Number".
		{"setpoint 1e400", `"setpoint_c":{"val":1e400,"w":[1,0]}`, "setpoint_c 1e400 out of range 5.0 to 35.0", false},
		{"setpoint -1e400", `"setpoint_c":{"val":-1e400,"w":[1,0]}`, "setpoint_c -1e400 out of range", false},
		{"setpoint 1e-400", `"setpoint_c":{"val":1e-400,"w":[1,0]}`, "setpoint_c 1e-400 out of range", false},
		{"mode unknown", `"mode":{"val":"turbo","w":[1,0]}`, "not one of", false},
		{"mode number", `"mode":{"val":1,"w":[1,0]}`, "must be a string, got a number", false},
		{"no val", `"mode":{"w":[1,0]}`, "no val", false},
		{"no w", `"mode":{"val":"heat"}`, "no write stamp", false},
		{"w float", `"mode":{"val":"heat","w":[1.0,0]}`, "not a non-negative integer", false},
		{"w negative", `"mode":{"val":"heat","w":[0,-1]}`, "not a non-negative integer", false},
		{"w short", `"mode":{"val":"heat","w":[1]}`, "1 elements", false},
		{"w beyond vc", `"mode":{"val":"heat","w":[3,0]}`, "beyond the message clock", false},
		{"w over the bound", `"mode":{"val":"heat","w":[4503599627370497,0]}`, "over the largest counter", false},
		{"not object", `"mode":"heat"`, "not an object", false},
		{"unknown", `"fan_speed":{"val":3,"w":[1,0]}`, "unknown property", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			payload := `{"v":1,"vc":[2,0],"props":{` + tc.props + `,"setpoint_c_ok":{"val":1,"w":[0,0]}},"src":"controller","extra":true}`
			payload = strings.Replace(payload, `"setpoint_c_ok"`, `"zz_unknown"`, 1)
			if strings.HasPrefix(tc.props, `"mode"`) {
				payload = strings.Replace(payload, `{"v":1,"vc":[2,0],"props":{`, `{"v":1,"vc":[2,0],"props":{"setpoint_c":{"val":21.55,"w":[1,0]},`, 1)
			}
			m, issues, err := DecodeMessage([]byte(payload))
			if err != nil {
				t.Fatalf("message rejected whole: %v", err)
			}
			if m.VC != (Clock{2, 0}) {
				t.Errorf("vc = %v", m.VC)
			}
			var found bool
			for _, is := range issues {
				if strings.Contains(is.Reason, tc.reason) && is.Unknown == tc.unknown {
					found = true
				}
				if _, ok := m.Props[is.Name]; ok {
					t.Errorf("rejected property %s still in the message", is.Name)
				}
			}
			if !found {
				t.Errorf("issues %v, want one saying %q", issues, tc.reason)
			}
			if strings.HasPrefix(tc.props, `"mode"`) {
				// The valid sibling applies, rounded to 0.1.
				if sp, ok := m.Props.Setpoint(); !ok || sp != 21.6 {
					t.Errorf("valid setpoint_c lost or not rounded: %v %v", sp, ok)
				}
			}
		})
	}
}

func TestDecodeMessageAccepts(t *testing.T) {
	m, issues, err := DecodeMessage([]byte(`{"v":1,"vc":[2,0],"props":{"setpoint_c":{"val":21.5,"w":[1,0]},"mode":{"val":"heat","w":[0,0]}},"src":"controller"}`))
	if err != nil || len(issues) != 0 {
		t.Fatalf("err %v issues %v", err, issues)
	}
	want := Message{V: 1, VC: Clock{2, 0}, Src: "controller", Props: Props{
		PropSetpoint: {Val: 21.5, W: Clock{1, 0}},
		PropMode:     {Val: "heat", W: Clock{0, 0}},
	}}
	b1, _ := m.Encode()
	b2, _ := want.Encode()
	if string(b1) != string(b2) {
		t.Errorf("got %s, want %s", b1, b2)
	}
	// props may be absent: an empty set, still a receive.
	m, _, err = DecodeMessage([]byte(`{"v":1,"vc":[3,1]}`))
	if err != nil || len(m.Props) != 0 || m.VC != (Clock{3, 1}) {
		t.Errorf("no props: %v %v", m, err)
	}
}

func TestEncodeRoundTrip(t *testing.T) {
	m := Message{VC: Clock{7, 9}, Src: SrcButton, Props: Props{PropSetpoint: {Val: 22.5, W: Clock{7, 8}}, PropMode: {Val: ModeCool, W: Clock{1, 9}}}}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	got, issues, err := DecodeMessage(b)
	if err != nil || len(issues) > 0 {
		t.Fatal(err, issues)
	}
	b2, _ := got.Encode()
	if string(b) != string(b2) {
		t.Errorf("round trip changed %s into %s", b, b2)
	}
}

func TestTelemetryAndStatus(t *testing.T) {
	tm, err := DecodeTelemetry([]byte(`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":20.31,"humidity_pct":41.2,"heat":true,"cool":false,"sensor_ok":true}`))
	if err != nil || *tm.TempC != 20.31 || !tm.Heat || !tm.SensorOK || *tm.HumidityPct != 41.2 {
		t.Fatalf("telemetry %+v %v", tm, err)
	}
	for _, bad := range []string{
		`{"v":1,"temp_c":20}`,
		`{"v":2,"ts":"2026-11-24T17:00:00Z"}`,
		`{"v":1,"ts":"yesterday"}`,
		`{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":"hot"}`,
		`{"v":1,"ts":"2026-11-24T17:00:00Z","humidity_pct":140}`,
	} {
		if _, err := DecodeTelemetry([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("telemetry %s accepted: %v", bad, err)
		}
	}
	for payload, want := range map[string]bool{`{"v":1,"online":true}`: true, `{"v":1,"online":false}`: false} {
		s, err := DecodeStatus([]byte(payload))
		if err != nil || s.Online != want {
			t.Errorf("status %s: %v %v", payload, s, err)
		}
		if string(s.Encode()) != payload {
			t.Errorf("status encodes as %s, want %s", s.Encode(), payload)
		}
	}
	for _, bad := range []string{`{"v":1}`, `{"v":1,"online":"yes"}`, `{"online":true}`} {
		if _, err := DecodeStatus([]byte(bad)); !errors.Is(err, ErrInvalid) {
			t.Errorf("status %s accepted", bad)
		}
	}
}

func TestTopics(t *testing.T) {
	for _, tc := range []struct {
		root, topic, id string
		kind            Kind
		ok              bool
	}{
		{"thermo", "thermo/d1/cmd", "d1", KindCmd, true},
		{"thermo", "thermo/living-room_2/event", "living-room_2", KindEvent, true},
		{"site/a", "site/a/d1/status", "d1", KindStatus, true},
		{"thermo", "thermo/D1/cmd", "", "", false},
		{"thermo", "thermo/d1/cmd/x", "", "", false},
		{"thermo", "other/d1/cmd", "", "", false},
		{"thermo", "thermo/d1/reboot", "", "", false},
		{"thermo", "thermo/-x/cmd", "", "", false},
	} {
		id, k, err := ParseTopic(tc.root, tc.topic)
		if (err == nil) != tc.ok || id != tc.id || k != tc.kind {
			t.Errorf("ParseTopic(%q, %q) = %q %q %v", tc.root, tc.topic, id, k, err)
		}
		if tc.ok && Topic(tc.root, id, k) != tc.topic {
			t.Errorf("Topic does not rebuild %q", tc.topic)
		}
	}
	for id, ok := range map[string]bool{"d1": true, "a": true, "controller": false, "controller-a": false, "": false, "Ab": false, strings.Repeat("a", 64): false, strings.Repeat("a", 63): true} {
		if (CheckDeviceID(id) == nil) != ok {
			t.Errorf("CheckDeviceID(%q) wrong", id)
		}
	}
}

func TestClockCompareAndSupersedes(t *testing.T) {
	for _, tc := range []struct {
		in, loc Clock
		order   Order
		takes   bool
	}{
		{Clock{2, 0}, Clock{1, 0}, After, true},
		{Clock{1, 0}, Clock{1, 0}, Equal, false},
		{Clock{1, 0}, Clock{2, 1}, Before, false},
		{Clock{1, 0}, Clock{0, 1}, Concurrent, false}, // controller's value arrives at a device: the device's stands
		{Clock{0, 1}, Clock{1, 0}, Concurrent, true},  // the device's value arrives at the controller: taken
		{Clock{4, 2}, Clock{0, 1}, After, true},
	} {
		if got := tc.in.Compare(tc.loc); got != tc.order {
			t.Errorf("%v vs %v: %v, want %v", tc.in, tc.loc, got, tc.order)
		}
		if got := Supersedes(tc.in, tc.loc); got != tc.takes {
			t.Errorf("Supersedes(%v, %v) = %v", tc.in, tc.loc, got)
		}
	}
}
