package protocol

import "testing"

// TestRenewalGrants: a device sends requests on its own csr topic and reads
// its own cert topic; the controller answers on every device's cert topic
// and reads every csr; nobody else's.
func TestRenewalGrants(t *testing.T) {
	for _, tc := range []struct {
		client, topic      string
		publish, subscribe bool
	}{
		{"d1", "thermo/d1/csr", true, false},
		{"d1", "thermo/d1/cert", false, true},
		{"d1", "thermo/d2/csr", false, false},
		{"d1", "thermo/d2/cert", false, false},
		{"d1", "thermo/+/cert", false, false},
		{"controller", "thermo/d1/cert", true, true},
		{"controller", "thermo/d1/csr", false, true},
		{"controller", "thermo/+/csr", false, true},
		{"controller-b", "thermo/d1/cert", true, true},
	} {
		if tc.topic[len(tc.topic)-1] != '+' && !containsWildcard(tc.topic) {
			if got := MayPublish("thermo", tc.client, tc.topic, false); got != tc.publish {
				t.Errorf("MayPublish(%s, %s) = %v, want %v", tc.client, tc.topic, got, tc.publish)
			}
			if MayPublish("thermo", tc.client, tc.topic, true) {
				t.Errorf("MayPublish(%s, %s, retained): renewal messages are never retained", tc.client, tc.topic)
			}
		}
		if got := MaySubscribe("thermo", tc.client, tc.topic); got != tc.subscribe {
			t.Errorf("MaySubscribe(%s, %s) = %v, want %v", tc.client, tc.topic, got, tc.subscribe)
		}
	}
}

func containsWildcard(s string) bool {
	for _, r := range s {
		if r == '+' || r == '#' {
			return true
		}
	}
	return false
}

func TestDecodeCertMessages(t *testing.T) {
	for _, tc := range []struct {
		payload string
		ok      bool
	}{
		{`{"v":1,"nonce":"ab","csr":"x"}`, true},
		{`{"v":2,"nonce":"ab","csr":"x"}`, false},
		{`{"v":1,"csr":"x"}`, false},
		{`{"v":1,"nonce":"ab"}`, false},
		{`not json`, false},
	} {
		if _, err := DecodeCertRequest([]byte(tc.payload)); (err == nil) != tc.ok {
			t.Errorf("DecodeCertRequest(%s): %v", tc.payload, err)
		}
	}
	for _, tc := range []struct {
		payload string
		ok      bool
	}{
		{`{"v":1,"nonce":"ab","cert":"x"}`, true},
		{`{"v":1,"nonce":"ab","error":"no"}`, true},
		{`{"v":1,"nonce":"ab","cert":"x","error":"no"}`, false},
		{`{"v":1,"nonce":"ab"}`, false},
		{`{"v":1,"cert":"x"}`, false},
	} {
		if _, err := DecodeCertReply([]byte(tc.payload)); (err == nil) != tc.ok {
			t.Errorf("DecodeCertReply(%s): %v", tc.payload, err)
		}
	}
}
