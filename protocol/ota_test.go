package protocol

import (
	"strings"
	"testing"
)

// TestOTAAccess: a device reads its own offer and reports its own state
// (retained); the controller offers to every device and reads the reports.
func TestOTAAccess(t *testing.T) {
	for _, tc := range []struct {
		client, topic string
		retain, want  bool
	}{
		{"d1", "thermo/d1/ota_state", true, true},
		{"d1", "thermo/d2/ota_state", true, false},
		{"d1", "thermo/d1/ota", true, false},
		{"d1", "thermo/d1/ota", false, false},
		{"controller", "thermo/d1/ota", true, true},
		{"controller-b", "thermo/d1/ota", true, true},
		{"controller", "thermo/d1/ota_state", true, false},
		{"controller", "thermo/controller/ota", true, false},
		{"d1", "thermo/d1/ota/state", true, false},
	} {
		if got := MayPublish("thermo", tc.client, tc.topic, tc.retain); got != tc.want {
			t.Errorf("MayPublish(%s, %s, retain %v) = %v, want %v", tc.client, tc.topic, tc.retain, got, tc.want)
		}
	}
	for _, tc := range []struct {
		client, filter string
		want           bool
	}{
		{"d1", "thermo/d1/ota", true},
		{"d1", "thermo/d2/ota", false},
		{"d1", "thermo/+/ota", false},
		{"d1", "thermo/d2/ota_state", false},
		{"controller", "thermo/+/ota_state", true},
		{"controller", "thermo/d1/ota", true},
	} {
		if got := MaySubscribe("thermo", tc.client, tc.filter); got != tc.want {
			t.Errorf("MaySubscribe(%s, %s) = %v, want %v", tc.client, tc.filter, got, tc.want)
		}
	}
	if id, k, err := ParseTopic("thermo", "thermo/d1/ota_state"); err != nil || id != "d1" || k != KindOTAState {
		t.Errorf("ParseTopic: %s %s %v", id, k, err)
	}
	if len(Topic(strings.Repeat("r", MaxRootLen), strings.Repeat("i", maxIDLen), KindOTAState)) > MaxTopicLen {
		t.Error("the longest ota_state topic exceeds MaxTopicLen")
	}
}

func TestOTAPayloads(t *testing.T) {
	b, err := EncodeOffer(Offer{Manifest: []byte(`{"manifest":{}}`), Port: 8443, Path: "/releases/x"})
	if err != nil {
		t.Fatal(err)
	}
	if o, err := DecodeOffer(b); err != nil || o.Port != 8443 {
		t.Fatalf("%+v %v", o, err)
	}
	for _, tc := range []struct{ name, payload string }{
		{"no manifest", `{"v":1,"url":"https://c/x"}`},
		{"no url or port", `{"v":1,"manifest":{},"path":"/x"}`},
		{"other version", `{"v":2,"manifest":{},"url":"https://c/x"}`},
		{"not json", `ota`},
		{"too big", `{"v":1,"manifest":"` + strings.Repeat("x", MaxPayload) + `"}`},
	} {
		if _, err := DecodeOffer([]byte(tc.payload)); err == nil {
			t.Errorf("%s: offer accepted", tc.name)
		}
	}
	b, err = EncodeOTAState(OTAState{State: OTARolledBack, Release: "1.1.0", Running: "1.0.0", Code: "crashed"})
	if err != nil {
		t.Fatal(err)
	}
	if s, err := DecodeOTAState(b); err != nil || s.State != OTARolledBack {
		t.Fatalf("%+v %v", s, err)
	}
	if _, err := DecodeOTAState([]byte(`{"v":1,"state":"bricked"}`)); err == nil {
		t.Error("unknown state accepted")
	}
}

// TestFirmwareField: status and telemetry carry the firmware version as an
// optional field; a status without it, or with a bad one, still stands.
func TestFirmwareField(t *testing.T) {
	for _, tc := range []struct {
		payload string
		want    Status
	}{
		{string(Status{Online: true, Firmware: "1.1.0"}.Encode()), Status{V: 1, Online: true, Firmware: "1.1.0"}},
		{`{"v":1,"online":true}`, Status{V: 1, Online: true}},
		{`{"v":1,"online":true,"firmware":7}`, Status{V: 1, Online: true}},
		{`{"v":1,"online":true,"firmware":"` + strings.Repeat("x", 65) + `"}`, Status{V: 1, Online: true}},
		{string(Status{Online: false, Firmware: "1.1.0"}.Encode()), Status{V: 1}},
	} {
		got, err := DecodeStatus([]byte(tc.payload))
		if err != nil || got != tc.want {
			t.Errorf("DecodeStatus(%s) = %+v, %v; want %+v", tc.payload, got, err, tc.want)
		}
	}
	tel := `{"v":1,"ts":"2026-11-24T17:00:00Z","heat":false,"cool":false,"sensor_ok":true,"firmware":"1.1.0"}`
	if got, err := DecodeTelemetry([]byte(tel)); err != nil || got.Firmware != "1.1.0" {
		t.Errorf("telemetry firmware: %+v, %v", got, err)
	}
	long := strings.Replace(tel, "1.1.0", strings.Repeat("x", 65), 1)
	if _, err := DecodeTelemetry([]byte(long)); err == nil {
		t.Error("telemetry with a 65-byte firmware accepted")
	}
}
