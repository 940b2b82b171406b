package protocol

import (
	"fmt"
	"regexp"
	"strings"
)

// DefaultRoot is the topic root when none is configured.
const DefaultRoot = "thermo"

// ControllerID is the certificate CN and MQTT client id of the controller.
const ControllerID = "controller"

// Kind is the last level of a device topic.
type Kind string

const (
	KindCmd       Kind = "cmd"
	KindEvent     Kind = "event"
	KindTelemetry Kind = "telemetry"
	KindStatus    Kind = "status"
)

var idPattern = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// ValidID reports whether id is a well-formed device id.
func ValidID(id string) bool { return idPattern.MatchString(id) }

// CheckDeviceID returns an error saying why id cannot name a device.
func CheckDeviceID(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("device id %q must match %s", id, idPattern)
	}
	if id == ControllerID {
		return fmt.Errorf("device id %q is reserved for the controller", id)
	}
	return nil
}

// CheckRoot returns an error if root cannot be a topic root: empty, with
// wildcards, or with empty levels.
func CheckRoot(root string) error {
	if root == "" || strings.ContainsAny(root, "+#\x00") || strings.HasPrefix(root, "/") ||
		strings.HasSuffix(root, "/") || strings.Contains(root, "//") {
		return fmt.Errorf("topic root %q must be non-empty, without wildcards or empty levels", root)
	}
	return nil
}

// Topic returns <root>/<id>/<kind>.
func Topic(root, id string, k Kind) string { return root + "/" + id + "/" + string(k) }

// Filter returns the subscription filter <root>/+/<kind> for every device.
func Filter(root string, k Kind) string { return root + "/+/" + string(k) }

// ParseTopic splits a device topic under root into the device id and kind.
func ParseTopic(root, topic string) (id string, k Kind, err error) {
	rest, ok := strings.CutPrefix(topic, root+"/")
	if !ok {
		return "", "", fmt.Errorf("topic %q is not under %q", topic, root)
	}
	id, kind, ok := strings.Cut(rest, "/")
	if !ok || strings.Contains(kind, "/") {
		return "", "", fmt.Errorf("topic %q is not <root>/<id>/<kind>", topic)
	}
	if !ValidID(id) {
		return "", "", fmt.Errorf("topic %q: bad device id %q", topic, id)
	}
	switch k := Kind(kind); k {
	case KindCmd, KindEvent, KindTelemetry, KindStatus:
		return id, k, nil
	}
	return "", "", fmt.Errorf("topic %q: unknown kind %q", topic, kind)
}
