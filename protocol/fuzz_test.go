package protocol

import (
	"encoding/json"
	"errors"
	"reflect"
	"testing"
)

// FuzzDecodeMessage checks that no payload panics the decoder and that
// whatever it accepts obeys every rule of "Bad input": valid properties
// only, stamps within the clock, a clean re-encoding under the size limit.
func FuzzDecodeMessage(f *testing.F) {
	for _, seed := range []string{
		`{"v":1,"vc":[2,0],"props":{"setpoint_c":{"val":18.0,"w":[1,0]}},"src":"controller"}`,
		`{"v":1,"vc":[0,2],"props":{"setpoint_c":{"val":23.0,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}},"src":"local"}`,
		`{"v":1,"vc":[2.0,0]}`, `{"v":1,"vc":[1,0],"props":[]}`, `{"v":2}`, `[]`, `{"v":1,"vc":[1,1],"props":{"mode":{"val":"x","w":[1]}}}`,
		// The properties added later: presets, preset, schedule.
		`{"v":1,"vc":[3,1],"props":{"preset":{"val":"away","w":[3,0]},"setpoint_c":{"val":16,"w":[3,0]},"presets":{"val":{"home":21,"away":16},"w":[2,0]}},"src":"controller"}`,
		`{"v":1,"vc":[1,4],"props":{"schedule":{"val":{"enabled":true,"tz":"Europe/Berlin","week":{"mon":[{"at":"06:30","setpoint_c":21.0},{"at":"22:00","preset":"sleep"}]}},"w":[1,3]}},"src":"schedule"}`,
		`{"v":1,"vc":[1,4],"props":{"schedule":{"val":{"enabled":true,"week":{"mon":[{"at":"22:00","preset":"sleep"},{"at":"06:30","setpoint_c":21.0}]}},"w":[1,3]}}}`,
		`{"v":1,"vc":[1,4],"props":{"presets":{"val":{"none":20},"w":[1,3]},"preset":{"val":"Away","w":[1,3]}}}`,
		`{"v":1,"vc":[4503599627370496,1],"props":{}}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		m, issues, err := DecodeMessage(payload)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not wrap ErrInvalid: %v", err)
			}
			return
		}
		if len(payload) > MaxPayload {
			t.Fatalf("accepted %d bytes", len(payload))
		}
		var top map[string]any
		if json.Unmarshal(payload, &top) != nil {
			t.Fatalf("accepted invalid JSON %q", payload)
		}
		if v, ok := top["v"].(float64); !ok || v != 1 {
			t.Fatalf("accepted v %v", top["v"])
		}
		for _, c := range m.VC {
			if c > MaxCounter {
				t.Fatalf("accepted counter %d", c)
			}
		}
		for name, p := range m.Props {
			norm, err := Normalize(name, p.Val)
			if err != nil {
				t.Fatalf("accepted invalid %s: %v", name, err)
			}
			if !reflect.DeepEqual(norm, p.Val) {
				t.Fatalf("accepted %s not in canonical form: %v, canonically %v", name, p.Val, norm)
			}
			if !p.W.LessEq(m.VC) {
				t.Fatalf("accepted stamp %v beyond clock %v", p.W, m.VC)
			}
		}
		for _, is := range issues {
			if _, ok := m.Props[is.Name]; ok {
				t.Fatalf("property %s both rejected and kept", is.Name)
			}
		}
		b, err := m.Encode()
		if err != nil {
			t.Fatalf("accepted message does not re-encode: %v", err)
		}
		if _, _, err := DecodeMessage(b); err != nil {
			t.Fatalf("re-encoded message rejected: %v", err)
		}
	})
}
