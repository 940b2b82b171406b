package protocol

import (
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// DefaultRoot is the topic root when none is configured.
const DefaultRoot = "thermo"

// ControllerID is the certificate CN and MQTT client id of the controller.
const ControllerID = "controller"

// ControllerPrefix begins the CN of each further controller process of a
// fleet: "controller-<name>", <name> matching the device id pattern. Such a
// CN has the controller's rights, so no device id may begin with it.
const ControllerPrefix = ControllerID + "-"

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

// ErrReservedID is wrapped by CheckDeviceID's error for an id that names a
// controller.
var ErrReservedID = errors.New(`"controller" and names starting with "controller-" are reserved for the controller's certificates`)

// CheckDeviceID returns an error saying why id cannot name a device. The id
// is the MQTT username, client id and a topic level, so anything else could
// escape a broker's ACL: Mosquitto substitutes it into a topic pattern as it
// is, so a '/' would reach into another device's topics and a capital
// would name another id than the one the embedded broker checks.
func CheckDeviceID(id string) error {
	if !ValidID(id) {
		return fmt.Errorf("invalid id %q: a device id is 1-63 characters of a-z, 0-9, '_' or '-', starting with a letter or digit", id)
	}
	if id == ControllerID || strings.HasPrefix(id, ControllerPrefix) {
		return fmt.Errorf("device id %q: %w", id, ErrReservedID)
	}
	return nil
}

// CheckControllerID returns an error saying why cn cannot name a
// controller (see IsControllerID).
func CheckControllerID(cn string) error {
	if !IsControllerID(cn) {
		return fmt.Errorf("controller name %q: must be %q or %q followed by 1-63 characters of a-z, 0-9, '_' or '-'", cn, ControllerID, ControllerPrefix)
	}
	return nil
}

// IsControllerID reports whether cn names the controller: "controller", or
// "controller-<name>" for one of several controller processes sharing a
// fleet. Brokers give every such CN the controller's rights.
func IsControllerID(cn string) bool {
	if cn == ControllerID {
		return true
	}
	name, ok := strings.CutPrefix(cn, ControllerPrefix)
	return ok && ValidID(name)
}

// CheckRoot returns an error if root cannot be a topic root: one or more
// non-empty levels, at most MaxRootLen bytes (so every topic and its
// payload fit a packet), not starting with '$' (brokers keep those for
// themselves), and without wildcards, '%' (Mosquitto's ACL patterns
// substitute it), spaces or control characters. Every part of the product
// checks a root with this one rule.
func CheckRoot(root string) error {
	if root == "" {
		return errors.New("topic root is empty")
	}
	if len(root) > MaxRootLen {
		return fmt.Errorf("topic root of %d bytes: at most %d, so every topic and its payload fit a packet of %d bytes", len(root), MaxRootLen, MaxPacketSize)
	}
	if strings.HasPrefix(root, "$") {
		return fmt.Errorf("topic root %q: cannot start with '$'", root)
	}
	for _, level := range strings.Split(root, "/") {
		if level == "" {
			return fmt.Errorf("topic root %q: empty topic level (leading, trailing or double '/')", root)
		}
	}
	for _, r := range root {
		if r == '+' || r == '#' || r == '%' || r <= ' ' || r == 0x7f {
			return fmt.Errorf("topic root %q: character %q not allowed", root, r)
		}
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
	case KindCmd, KindEvent, KindTelemetry, KindStatus, KindCSR, KindCert, KindOTA, KindOTAState:
		return id, k, nil
	}
	return "", "", fmt.Errorf("topic %q: unknown kind %q", topic, kind)
}

// Sizes every broker of a fleet enforces, so that one device certificate
// cannot exhaust a broker's memory or disk: a broker reads an MQTT packet's
// length from its fixed header before the packet, and refuses a packet
// announced longer than MaxPacketSize before it reserves room for it.
const (
	// MaxRootLen is the longest topic root, in bytes.
	MaxRootLen = 256
	// MaxTopicLen is the longest topic of the contract:
	// <root>/<id>/telemetry with the longest root and id.
	MaxTopicLen = MaxRootLen + len("/") + maxIDLen + len("/") + len(KindTelemetry)
	// MaxPacketSize is the largest MQTT packet a broker accepts, fixed
	// header included: the largest payload and room for the rest of a
	// PUBLISH (8 KiB).
	MaxPacketSize = MaxPayload + packetRoom

	// maxIDLen is the longest device id (idPattern).
	maxIDLen = 63
	// packetRoom is what a PUBLISH holds besides its payload: a fixed
	// header of at most 5 bytes, the topic's 2-byte length and the topic
	// (at most MaxTopicLen bytes), a 2-byte packet id, and MQTT 5
	// properties (none of ours uses them). 4096 leaves over 3 KiB to
	// spare; a CONNECT (client id, will topic, a Status as will payload)
	// is far smaller.
	packetRoom = 4096
)

// SelfID stands, in a Grant's Filter, for the topic level of the client's
// own id.
const SelfID = "{id}"

// A Grant is one right of a client on the topics under the topic root:
// PROTOCOL.md's Topics table as data, so the embedded broker (MayPublish,
// MaySubscribe) and the generated Mosquitto ACL apply the same rule.
type Grant struct {
	// Filter is a topic filter relative to the topic root, where the level
	// SelfID is the client's own id: "{id}/event", "+/cmd", "#".
	Filter string
	// Publish allows publishing on the topics Filter matches; Retain
	// allows them the RETAIN flag too.
	Publish, Retain bool
	// Subscribe allows subscribing to Filter and filters within it, and
	// receiving what is published on its topics.
	Subscribe bool
}

// deviceGrants: a device publishes its event (retained: a rebuilding
// controller reads it), telemetry (never retained) and status (retained,
// as its will), and reads its commands and, while rejoining, its own event.
// Certificate renewal (certs.go) and OTA updates (ota.go) add their own.
var deviceGrants = append([]Grant{
	{Filter: SelfID + "/" + string(KindEvent), Publish: true, Retain: true, Subscribe: true},
	{Filter: SelfID + "/" + string(KindTelemetry), Publish: true},
	{Filter: SelfID + "/" + string(KindStatus), Publish: true, Retain: true},
	{Filter: SelfID + "/" + string(KindCmd), Subscribe: true},
}, slices.Concat(renewalDeviceGrants, otaDeviceGrants)...)

// controllerGrants: the controller publishes commands (retained) to every
// device and reads everything under the root.
var controllerGrants = append([]Grant{
	{Filter: "+/" + string(KindCmd), Publish: true, Retain: true},
	{Filter: "#", Subscribe: true},
}, slices.Concat(renewalControllerGrants, otaControllerGrants)...)

// Grants returns the rights of the client whose certificate CN (and MQTT
// client id) is client: the controller's for IsControllerID, a device's for
// a device id, none for anything else.
func Grants(client string) []Grant {
	switch {
	case IsControllerID(client):
		return ControllerGrants()
	case CheckDeviceID(client) == nil:
		return DeviceGrants()
	}
	return nil
}

// DeviceGrants returns the rights of every device, SelfID being its own id.
func DeviceGrants() []Grant { return slices.Clone(deviceGrants) }

// ControllerGrants returns the rights of every controller CN.
func ControllerGrants() []Grant { return slices.Clone(controllerGrants) }

// MayPublish reports whether client may publish on topic under root, with
// the RETAIN flag if retain. Only topics <root>/<device id>/<kind> of the
// contract are ever allowed, and only those Grants(client) give it.
func MayPublish(root, client, topic string, retain bool) bool {
	id, _, err := ParseTopic(root, topic)
	if err != nil || CheckDeviceID(id) != nil {
		return false
	}
	for _, g := range Grants(client) {
		if g.Publish && (g.Retain || !retain) && filterCovers(g.filter(root, client), topic) {
			return true
		}
	}
	return false
}

// MaySubscribe reports whether client may subscribe to filter under root, or
// receive a message published on filter when it is a topic name: every topic
// filter matches must be within a filter Grants(client) lets it read.
func MaySubscribe(root, client, filter string) bool {
	if !validFilter(filter) {
		return false
	}
	for _, g := range Grants(client) {
		if g.Subscribe && filterCovers(g.filter(root, client), filter) {
			return true
		}
	}
	return false
}

// filter is g's filter for client under root.
func (g Grant) filter(root, client string) string {
	levels := strings.Split(g.Filter, "/")
	for i, l := range levels {
		if l == SelfID {
			levels[i] = client
		}
	}
	return root + "/" + strings.Join(levels, "/")
}

// validFilter reports whether f is a well-formed MQTT topic filter: not
// empty, no NUL, '+' and '#' alone in their level, '#' only last.
func validFilter(f string) bool {
	if f == "" || strings.ContainsRune(f, 0) {
		return false
	}
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.ContainsAny(l, "+#") && len(l) != 1 {
			return false
		}
		if l == "#" && i != len(levels)-1 {
			return false
		}
	}
	return true
}

// filterCovers reports whether every topic filter f matches is matched by
// grant (both well-formed filters; a topic name is a filter that matches
// itself). A grant's "#" also matches its parent level, as in MQTT.
func filterCovers(grant, f string) bool {
	g, s := strings.Split(grant, "/"), strings.Split(f, "/")
	for i, gl := range g {
		if gl == "#" {
			return true
		}
		if i >= len(s) {
			return false
		}
		switch sl := s[i]; {
		case sl == "#":
			return false // f reaches deeper than grant's fixed levels
		case gl == "+":
			// Any single level of f, "+" included.
		case sl != gl:
			return false
		}
	}
	return len(s) == len(g)
}
