package protocol

import (
	"strings"
	"testing"
)

func TestControllerIDs(t *testing.T) {
	for _, tc := range []struct {
		cn                 string
		controller, device bool
	}{
		{"controller", true, false},
		{"controller-a", true, false},
		{"controller-site_2", true, false},
		{"controller-" + strings.Repeat("a", 63), true, false},
		{"controller-" + strings.Repeat("a", 64), false, false},
		{"controller-", false, false},
		{"controller--x", false, false},
		{"controller-A", false, false},
		{"controller-a/b", false, false},
		{"controllerx", false, true},
		{"xcontroller", false, true},
		{"d1", false, true},
		{"Controller", false, false},
		{"", false, false},
	} {
		if got := IsControllerID(tc.cn); got != tc.controller {
			t.Errorf("IsControllerID(%q) = %v, want %v", tc.cn, got, tc.controller)
		}
		if got := CheckDeviceID(tc.cn) == nil; got != tc.device {
			t.Errorf("CheckDeviceID(%q) accepts = %v, want %v", tc.cn, got, tc.device)
		}
	}
}

// TestMayPublish: PROTOCOL.md's Topics table, and nothing else. A device
// publishes event (retained or not), telemetry (never retained) and status
// on its own id; the controller publishes cmd to every device.
func TestMayPublish(t *testing.T) {
	for _, tc := range []struct {
		client, topic string
		retain, want  bool
	}{
		{"d1", "thermo/d1/event", true, true},
		{"d1", "thermo/d1/event", false, true},
		{"d1", "thermo/d1/telemetry", false, true},
		{"d1", "thermo/d1/telemetry", true, false}, // the contract: never retained
		{"d1", "thermo/d1/status", true, true},
		{"d1", "thermo/d1/status", false, true},
		{"d1", "thermo/d1/cmd", false, false},
		{"d1", "thermo/d1/cmd", true, false},
		{"d1", "thermo/d2/event", false, false},
		{"d1", "thermo/d10/event", false, false},
		{"d1", "thermo/d1/junk", false, false},
		{"d1", "thermo/d1/junk/1", true, false},
		{"d1", "thermo/d1/event/x", true, false},
		{"d1", "thermo/d1", true, false},
		{"d1", "thermo/d1/", true, false},
		{"d1", "thermo/d1/+", false, false},
		{"d1", "thermo/d1/#", false, false},
		{"d1", "other/d1/event", false, false},
		{"d1", "thermo/status", true, false},
		{"controller", "thermo/d1/cmd", true, true},
		{"controller", "thermo/d1/cmd", false, true},
		{"controller-b", "thermo/d1/cmd", true, true},
		// Retiring a device (controllerlite delete) clears its retained
		// messages: the controller may publish there, retained.
		{"controller", "thermo/d1/event", true, true},
		{"controller", "thermo/d1/status", true, true},
		{"controller", "thermo/d1/telemetry", true, true},
		{"controller", "thermo/d1/junk", false, false},
		{"controller", "thermo/controller/cmd", true, false}, // not a device
		{"controller", "thermo/controller-b/cmd", true, false},
		{"controller", "thermo/+/cmd", true, false},
		{"controller", "thermo/Bad/cmd", true, false},
		{"controller-b", "thermo/controller-b/event", true, false},
		{"controller-b", "thermo/controller-b/status", true, false},
		{"Bad", "thermo/Bad/event", true, false},
		{"inline", "thermo/inline/event", true, true}, // a device id: the broker reserves it itself
		{"", "thermo//event", true, false},
		{"d1/x", "thermo/d1/x/event", true, false},
	} {
		if got := MayPublish("thermo", tc.client, tc.topic, tc.retain); got != tc.want {
			t.Errorf("MayPublish(%q, %q, retain %v) = %v, want %v", tc.client, tc.topic, tc.retain, got, tc.want)
		}
	}
	// A root of several levels.
	if !MayPublish("site/thermo", "d1", "site/thermo/d1/event", true) || MayPublish("site/thermo", "d1", "thermo/d1/event", true) {
		t.Error("MayPublish with root site/thermo")
	}
}

// TestMaySubscribe: a device reads its own cmd and event (its rejoin waits
// for its own retained event), exactly; the controller reads anything under
// the root.
func TestMaySubscribe(t *testing.T) {
	for _, tc := range []struct {
		client, filter string
		want           bool
	}{
		{"d1", "site/thermo/d1/cmd", true},
		{"d1", "site/thermo/d1/event", true},
		{"d1", "site/thermo/d1/status", false},
		{"d1", "site/thermo/d1/telemetry", false},
		{"d1", "site/thermo/d1/junk", false},
		{"d1", "site/thermo/d1/#", false},
		{"d1", "site/thermo/d1/+", false},
		{"d1", "site/thermo/d1", false},
		{"d1", "site/thermo/d2/cmd", false},
		{"d1", "site/thermo/+/cmd", false},
		{"d1", "site/thermo/#", false},
		{"d1", "site/+/d1/cmd", false},
		{"d1", "+/thermo/d1/cmd", false},
		{"d1", "#", false},
		{"d1", "$share/g/site/thermo/d1/cmd", false},
		{"d1", "thermo/d1/cmd", false},
		{"controller", "site/thermo", true},
		{"controller", "site/thermo/#", true},
		{"controller", "site/thermo/+/event", true},
		{"controller", "site/thermo/d1/cmd", true},
		{"controller", "site/thermo/d1/junk/x", true},
		{"controller-a", "site/thermo/#", true},
		{"controller", "site/#", false},
		{"controller", "site/+/d1/cmd", false},
		{"controller", "site/thermostat/x", false},
		{"controller", "#", false},
		{"controller", "site/thermo/#/x", false},
		{"controller", "site/thermo/a+", false},
		{"controller", "", false},
		{"Bad", "site/thermo/Bad/cmd", false},
		{"", "site/thermo//cmd", false},
	} {
		if got := MaySubscribe("site/thermo", tc.client, tc.filter); got != tc.want {
			t.Errorf("MaySubscribe(%q, %q) = %v, want %v", tc.client, tc.filter, got, tc.want)
		}
	}
}

// TestPacketRoom: the largest payload on the longest topic fits
// MaxPacketSize with room for a fixed header, lengths and a packet id.
func TestPacketRoom(t *testing.T) {
	root := strings.Repeat("r", MaxRootLen)
	if err := CheckRoot(root); err != nil {
		t.Fatalf("CheckRoot of MaxRootLen bytes: %v", err)
	}
	if err := CheckRoot(root + "r"); err == nil {
		t.Fatal("CheckRoot accepted a root over MaxRootLen")
	}
	topic := Topic(root, strings.Repeat("i", maxIDLen), KindTelemetry)
	if len(topic) != MaxTopicLen {
		t.Errorf("longest topic %d bytes, MaxTopicLen %d", len(topic), MaxTopicLen)
	}
	const fixedHeader, topicLen, packetID, props = 5, 2, 2, 512
	if need := fixedHeader + topicLen + len(topic) + packetID + props + MaxPayload; need > MaxPacketSize {
		t.Errorf("a full PUBLISH needs %d bytes, over MaxPacketSize %d", need, MaxPacketSize)
	}
}

// One rule for a topic root, the strict one, for every part of the product
// (the fleet, the firmware, both brokers, the Mosquitto configuration).
func TestCheckRoot(t *testing.T) {
	for _, tc := range []struct {
		root string
		ok   bool
	}{
		{"thermo", true},
		{"site/a/thermo", true},
		{"", false},
		{"$SYS", false},
		{"a b", false},
		{"50%", false},
		{"a/+/b", false},
		{"a#", false},
		{"/thermo", false},
		{"thermo/", false},
		{"a//b", false},
		{"tab\there", false},
		{"nul\x00", false},
	} {
		if err := CheckRoot(tc.root); (err == nil) != tc.ok {
			t.Errorf("CheckRoot(%q) = %v, want ok=%v", tc.root, err, tc.ok)
		}
	}
}
