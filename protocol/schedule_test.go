package protocol

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

func TestDecodeScheduleValid(t *testing.T) {
	s, err := DecodeSchedule([]byte(`{"enabled":true,"tz":"Europe/Berlin","week":{"mon":[{"at":"06:30","setpoint_c":21.04},{"at":"22:00","preset":"sleep"}],"sun":[]}}`))
	if err != nil {
		t.Fatal(err)
	}
	if !s.Enabled || s.TZ != "Europe/Berlin" || len(s.Week["mon"]) != 2 || *s.Week["mon"][0].SetpointC != 21 || s.Week["mon"][1].Preset != "sleep" {
		t.Fatalf("%+v", s)
	}
	if _, ok := s.Week["sun"]; ok {
		t.Error("an empty day is kept")
	}
	if got := s.PresetsUsed(); len(got) != 1 || got[0] != "sleep" {
		t.Errorf("PresetsUsed %v", got)
	}
	// A round trip through JSON and Normalize gives the same value.
	b, _ := json.Marshal(s)
	var raw any
	json.Unmarshal(b, &raw)
	v, err := Normalize(PropSchedule, raw)
	if err != nil {
		t.Fatal(err)
	}
	again, _ := json.Marshal(v)
	if string(again) != string(b) {
		t.Errorf("round trip %s, want %s", again, b)
	}
}

var nineEntries = func() string {
	var es []string
	for h := range 9 {
		es = append(es, fmt.Sprintf(`{"at":"%02d:00","setpoint_c":20}`, h))
	}
	return strings.Join(es, ",")
}()

func TestScheduleRejected(t *testing.T) {
	for _, tc := range []struct{ name, in, reason string }{
		{"no enabled", `{"week":{}}`, "no enabled"},
		{"unknown key", `{"enabled":true,"week":{},"holiday":1}`, "unknown field"},
		{"bad tz", `{"enabled":true,"tz":"Mars/Olympus","week":{}}`, "not a known IANA zone"},
		{"empty tz", `{"enabled":true,"tz":"","week":{}}`, "tz is empty"},
		{"bad day", `{"enabled":true,"week":{"monday":[]}}`, `day "monday"`},
		{"bad at", `{"enabled":true,"week":{"mon":[{"at":"6:30","setpoint_c":20}]}}`, "not HH:MM"},
		{"at 24:00", `{"enabled":true,"week":{"mon":[{"at":"24:00","setpoint_c":20}]}}`, "not a time of day"},
		{"not ascending", `{"enabled":true,"week":{"mon":[{"at":"07:00","setpoint_c":20},{"at":"07:00","setpoint_c":21}]}}`, "strictly ascending"},
		{"both", `{"enabled":true,"week":{"mon":[{"at":"07:00","setpoint_c":20,"preset":"home"}]}}`, "exactly one"},
		{"neither", `{"enabled":true,"week":{"mon":[{"at":"07:00"}]}}`, "exactly one"},
		{"setpoint out of range", `{"enabled":true,"week":{"mon":[{"at":"07:00","setpoint_c":40}]}}`, "out of range"},
		{"preset none", `{"enabled":true,"week":{"mon":[{"at":"07:00","preset":"none"}]}}`, "not be \"none\""},
		{"nine entries", `{"enabled":true,"week":{"mon":[` + nineEntries + `]}}`, "at most 8"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := DecodeSchedule([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("err = %v, want it to say %q", err, tc.reason)
			}
		})
	}
}

func TestPresetsRules(t *testing.T) {
	for _, tc := range []struct {
		name string
		val  any
		ok   bool
	}{
		{"defaults", map[string]any{"home": 21.0, "away": 16.0}, true},
		{"none is reserved", map[string]any{"none": 20.0}, false},
		{"empty", map[string]any{}, false},
		{"nine", map[string]any{"a": 20.0, "b": 20.0, "c": 20.0, "d": 20.0, "e": 20.0, "f": 20.0, "g": 20.0, "h": 20.0, "i": 20.0}, false},
		{"bad name", map[string]any{"Home": 20.0}, false},
		{"long name", map[string]any{"abcdefghijklmnopq": 20.0}, false},
		{"out of range", map[string]any{"home": 36.0}, false},
		{"not a number", map[string]any{"home": "21"}, false},
		{"not an object", []any{1.0}, false},
	} {
		v, err := Normalize(PropPresets, tc.val)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v %v, want ok=%v", tc.name, v, err, tc.ok)
		}
	}
	for _, tc := range []struct {
		val any
		ok  bool
	}{{"none", true}, {"away", true}, {"Away", false}, {1.0, false}, {"", false}} {
		if _, err := Normalize(PropPreset, tc.val); (err == nil) != tc.ok {
			t.Errorf("preset %v: %v, want ok=%v", tc.val, err, tc.ok)
		}
	}
}

// The contract's promise: a full week of 8 entries a day with eight
// presets fits one message.
func TestFullWeekFits(t *testing.T) {
	week := map[string]any{}
	for _, d := range Weekdays {
		var es []any
		for h := range MaxEntriesPerDay {
			at := []byte("00:30")
			at[0], at[1] = byte('0'+(h*3)/10), byte('0'+(h*3)%10)
			if h%2 == 0 {
				es = append(es, map[string]any{"at": string(at), "setpoint_c": 21.5})
			} else {
				es = append(es, map[string]any{"at": string(at), "preset": "comfort_long1"})
			}
		}
		week[d] = es
	}
	sched, err := Normalize(PropSchedule, map[string]any{"enabled": true, "tz": "America/Argentina/ComodRivadavia", "week": week})
	if err != nil {
		t.Fatal(err)
	}
	presets := map[string]any{}
	for _, n := range []string{"comfort_long1", "comfort_long2", "comfort_long3", "comfort_long4", "comfort_long5", "comfort_long6", "comfort_long7", "comfort_long8"} {
		presets[n] = 22.5
	}
	ps, err := Normalize(PropPresets, presets)
	if err != nil {
		t.Fatal(err)
	}
	big := Clock{MaxCounter, MaxCounter}
	m := Message{VC: big, Src: SrcSchedule, Props: Props{
		PropSchedule: {Val: sched, W: big}, PropPresets: {Val: ps, W: big},
		PropPreset: {Val: "comfort_long1", W: big}, PropSetpoint: {Val: 22.5, W: big}, PropMode: {Val: ModeHeat, W: big},
	}}
	b, err := m.Encode()
	if err != nil {
		t.Fatal(err)
	}
	back, issues, err := DecodeMessage(b)
	if err != nil || len(issues) > 0 {
		t.Fatalf("%d bytes: %v %v", len(b), err, issues)
	}
	t.Logf("a full week with eight presets: %d bytes", len(b))
	var viaJSON Props
	if err := json.Unmarshal(mustJSON(t, back.Props), &viaJSON); err != nil {
		t.Fatal(err)
	}
	for name, p := range back.Props {
		if string(mustJSON(t, viaJSON[name].Val)) != string(mustJSON(t, p.Val)) {
			t.Errorf("%s changed through the store's JSON", name)
		}
	}
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
