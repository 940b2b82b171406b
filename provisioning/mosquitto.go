package provisioning

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/thermofleet/thermo/internal/atomicfile"
	"github.com/thermofleet/thermo/protocol"
)

// File names written by WriteMosquittoConfig.
const (
	MosquittoConfFile = "mosquitto.conf"
	MosquittoACLFile  = "mosquitto.acl"
)

// DefaultMQTTSPort is the MQTT-over-TLS port.
const DefaultMQTTSPort = 8883

// MosquittoOptions describes a Mosquitto configuration for this PKI.
type MosquittoOptions struct {
	// Port of the TLS listener; default 8883.
	Port int
	// BindAddress of the listener; empty listens on every interface.
	BindAddress string
	// CAFile, CertFile and KeyFile are the paths Mosquitto reads: the CA
	// that issued the clients' certificates and the broker's server
	// certificate and key. Required.
	CAFile, CertFile, KeyFile string
	// ACLFile is the path Mosquitto reads the ACL from. Required.
	ACLFile string
	// CRLFile, when set, is the CRL Mosquitto refuses the revoked
	// certificates of (`controllerlite pki crl`).
	CRLFile string
	// TopicRoot is the first topic level; default "thermo".
	TopicRoot string
	// Controllers are the CNs of further controller processes
	// ("controller-<name>"), given the controller's rights beside
	// "controller". Mosquitto's ACL cannot match a username by its prefix,
	// so each is listed by name.
	Controllers []string
	// Global lines placed before the listener, verbatim: tests add
	// "user root", "persistence true", "log_dest stderr" and the like.
	Global []string
}

// MosquittoConfig returns the text of mosquitto.conf and of its ACL file.
//
// Each client's certificate CN becomes its username
// (use_identity_as_username) and its client id (use_username_as_clientid),
// so no client can take another's id. The ACL is protocol.Grants written in
// Mosquitto's words, the rule the embedded broker applies: a device
// publishes only its own event, telemetry and status topics and reads only
// its own cmd and event; a controller publishes every device's cmd and reads
// everything under the root. A forbidden publish is acknowledged by
// Mosquitto and silently dropped. max_packet_size is protocol.MaxPacketSize:
// Mosquitto closes a connection whose packet announces more, before reading
// it.
//
// Where Mosquitto 2.0 falls short of the embedded broker, it is said in the
// files: it cannot refuse the RETAIN flag on one topic (a device can retain
// one telemetry message, of at most max_packet_size bytes), it has no
// setting for the time a new connection may take to send CONNECT (it closes
// one after 90 s, 1.5 times a 60 s keep-alive it assumes), and it takes the
// first CN of a certificate's subject where Go takes the last, so a
// certificate with two CNs must never be issued.
// MosquittoMaxQueued is Mosquitto's max_queued_messages in the files
// MosquittoConfig writes: the messages Mosquitto keeps for one client
// beyond those in flight, room for a controller's subscription to the
// retained messages of 30,000 devices.
const MosquittoMaxQueued = 100000

func MosquittoConfig(o MosquittoOptions) (conf, acl []byte, err error) {
	if o.Port == 0 {
		o.Port = DefaultMQTTSPort
	}
	if o.Port < 1 || o.Port > 65535 {
		return nil, nil, fmt.Errorf("mosquitto config: port %d out of range", o.Port)
	}
	if o.TopicRoot == "" {
		o.TopicRoot = protocol.DefaultRoot
	}
	if err := protocol.CheckRoot(o.TopicRoot); err != nil {
		return nil, nil, fmt.Errorf("mosquitto config: %w", err)
	}
	if strings.ContainsAny(o.CRLFile, "\n\r") {
		return nil, nil, fmt.Errorf("mosquitto config: CRL file path %q contains a line break", o.CRLFile)
	}
	for name, v := range map[string]string{"CA file": o.CAFile, "certificate file": o.CertFile, "key file": o.KeyFile, "ACL file": o.ACLFile} {
		if v == "" {
			return nil, nil, fmt.Errorf("mosquitto config: %s not set", name)
		}
		if strings.ContainsAny(v, "\n\r") {
			return nil, nil, fmt.Errorf("mosquitto config: %s path %q contains a line break", name, v)
		}
	}
	if strings.ContainsAny(o.BindAddress, " \t\n\r") {
		return nil, nil, fmt.Errorf("mosquitto config: bind address %q contains white space", o.BindAddress)
	}
	for _, l := range o.Global {
		if strings.ContainsAny(l, "\n\r") {
			return nil, nil, fmt.Errorf("mosquitto config: global line %q contains a line break", l)
		}
	}
	controllers := []string{protocol.ControllerID}
	for _, cn := range o.Controllers {
		if !protocol.IsControllerID(cn) {
			return nil, nil, fmt.Errorf("mosquitto config: controller %q is not a controller's CN (%q or %q followed by a name matching the device id pattern)", cn, protocol.ControllerID, protocol.ControllerPrefix)
		}
		if !slices.Contains(controllers, cn) {
			controllers = append(controllers, cn)
		}
	}

	var b strings.Builder
	b.WriteString("# Mosquitto configuration for the thermofleet PKI, written by `controllerlite pki mosquitto`.\n")
	b.WriteString("# Mosquitto 2.0 or later. Start it with: mosquitto -c THIS_FILE\n\n")
	for _, l := range o.Global {
		b.WriteString(l + "\n")
	}
	if len(o.Global) > 0 {
		b.WriteString("\n")
	}
	b.WriteString("# Security settings apply to every listener.\n")
	b.WriteString("per_listener_settings false\n")
	fmt.Fprintf(&b, "acl_file %s\n\n", o.ACLFile)
	b.WriteString("# The largest MQTT packet of the protocol: a 4096-byte payload and its topic, with room\n")
	b.WriteString("# to spare. A client announcing a larger packet is disconnected before it is read.\n")
	fmt.Fprintf(&b, "max_packet_size %d\n", protocol.MaxPacketSize)
	b.WriteString("# A controller subscribes to every device's topics: each subscription is sent every\n")
	b.WriteString("# retained message at once (three per device) and a returning fleet's events come\n")
	b.WriteString("# together. At Mosquitto's default of 1000 queued messages per client, events beyond\n")
	b.WriteString("# that were dropped without a word to the client (1,000 devices, docs/scale.md).\n")
	fmt.Fprintf(&b, "max_queued_messages %d\n", MosquittoMaxQueued)
	b.WriteString("# Mosquitto 2.0 has no setting for the time a new connection may take to send CONNECT:\n")
	b.WriteString("# it closes one that sends nothing after 90 s (1.5 times a 60 s keep-alive).\n\n")
	b.WriteString("# MQTT over TLS with mutual authentication.\n")
	if o.BindAddress != "" {
		fmt.Fprintf(&b, "listener %d %s\n", o.Port, o.BindAddress)
	} else {
		fmt.Fprintf(&b, "listener %d\n", o.Port)
	}
	b.WriteString("protocol mqtt\n")
	fmt.Fprintf(&b, "cafile %s\n", o.CAFile)
	fmt.Fprintf(&b, "certfile %s\n", o.CertFile)
	fmt.Fprintf(&b, "keyfile %s\n", o.KeyFile)
	if o.CRLFile != "" {
		b.WriteString("# Revoked certificates (controllerlite pki revoke, pki crl). Mosquitto reads it at start\n")
		b.WriteString("# and on SIGHUP: send SIGHUP after each refresh (a restart also cuts connected clients).\n")
		fmt.Fprintf(&b, "crlfile %s\n", o.CRLFile)
	}
	b.WriteString("tls_version tlsv1.2\n")
	b.WriteString("# Every client must present a certificate issued by cafile.\n")
	b.WriteString("require_certificate true\n")
	b.WriteString("# The certificate's CN is the username, and the username is the client id:\n")
	b.WriteString("# no client can take another's id. Mosquitto takes the first CN of the subject,\n")
	b.WriteString("# Go the last: the fleet CA never issues or signs a subject with two CNs.\n")
	b.WriteString("use_identity_as_username true\n")
	b.WriteString("use_username_as_clientid true\n")
	b.WriteString("# Without it every TLS connect took 43-50 ms instead of 3-5 ms.\n")
	b.WriteString("set_tcp_nodelay true\n")

	var a strings.Builder
	a.WriteString("# Mosquitto ACL for the thermofleet PKI, written by `controllerlite pki mosquitto`.\n")
	a.WriteString("# The username is the CN of the client's certificate. Exactly the topics of PROTOCOL.md:\n")
	a.WriteString("# the same rule as controllerlite's embedded broker (protocol.Grants).\n\n")
	a.WriteString("# A device (username = device id) publishes its own event, telemetry and status,\n")
	a.WriteString("# and reads its own cmd and event. Patterns apply to every user.\n")
	a.WriteString("# Mosquitto cannot refuse the RETAIN flag on one topic: the embedded broker drops a\n")
	a.WriteString("# retained telemetry message, Mosquitto keeps one per device (of at most max_packet_size).\n")
	writeGrants(&a, "pattern", o.TopicRoot, protocol.DeviceGrants(), "%u")
	for _, cn := range controllers {
		fmt.Fprintf(&a, "\n# A controller publishes every device's cmd and reads everything under %s.\n", o.TopicRoot)
		a.WriteString("# The device patterns above would give it topics of its own name: denied.\n")
		fmt.Fprintf(&a, "user %s\n", cn)
		fmt.Fprintf(&a, "topic deny %s/%s/#\n", o.TopicRoot, cn)
		writeGrants(&a, "topic", o.TopicRoot, protocol.ControllerGrants(), cn)
	}
	return []byte(b.String()), []byte(a.String()), nil
}

// writeGrants writes one ACL line per right of grants: "write" for a
// publish, "read" for a subscription, with self in place of the client's own
// id (Mosquitto's %u in a pattern).
func writeGrants(w *strings.Builder, keyword, root string, grants []protocol.Grant, self string) {
	for _, g := range grants {
		topic := root + "/" + strings.ReplaceAll(g.Filter, protocol.SelfID, self)
		if g.Publish {
			fmt.Fprintf(w, "%s write %s\n", keyword, topic)
		}
		if g.Subscribe {
			fmt.Fprintf(w, "%s read %s\n", keyword, topic)
		}
	}
}

// WriteMosquittoConfig writes mosquitto.conf and mosquitto.acl into dir
// (0644: they hold no secret) and returns their paths. When o.ACLFile is
// empty it is set to the ACL written here.
func WriteMosquittoConfig(dir string, o MosquittoOptions) (confFile, aclFile string, err error) {
	confFile = filepath.Join(dir, MosquittoConfFile)
	aclFile = filepath.Join(dir, MosquittoACLFile)
	if o.ACLFile == "" {
		if o.ACLFile, err = filepath.Abs(aclFile); err != nil {
			return "", "", fmt.Errorf("mosquitto config: %w", err)
		}
	}
	conf, acl, err := MosquittoConfig(o)
	if err != nil {
		return "", "", err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", "", fmt.Errorf("mosquitto config: %w", err)
	}
	if err := atomicfile.WriteFile(aclFile, acl, CertFileMode); err != nil {
		return "", "", fmt.Errorf("mosquitto config: %w", err)
	}
	if err := atomicfile.WriteFile(confFile, conf, CertFileMode); err != nil {
		return "", "", fmt.Errorf("mosquitto config: %w", err)
	}
	return confFile, aclFile, nil
}
