package broker

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/thermofleet/thermo/protocol"
	"github.com/thermofleet/thermo/provisioning"
)

// controllerID is the certificate CN of the controller.
const controllerID = protocol.ControllerID

// reservedIDs are ids no certificate may claim: mochi's in-process client
// is registered under "inline", and a network client with that id would
// take over its session.
var reservedIDs = map[string]bool{mqtt.InlineClientId: true}

// authHook identifies clients by their certificate and enforces the ACL:
// protocol.MayPublish and protocol.MaySubscribe, the rule the generated
// Mosquitto ACL states too. It is the broker's only authentication and ACL
// hook.
type authHook struct {
	mqtt.HookBase
	root string
	log  *slog.Logger
	// revoked, if set, refuses revoked certificates (Options.Revoked).
	revoked func(*x509.Certificate) (string, bool)

	onClient atomic.Pointer[func(id string, connected bool)]

	// gate, if set, holds a new session back until the previous
	// connection of its client id is torn down (see sessionGate).
	gate *sessionGate
	// identity, if set, counts takeovers of live sessions (identity.go).
	identity *identity

	mu      sync.Mutex
	current map[string]*mqtt.Client // the live session of each client id
}

func newAuthHook(root string, log *slog.Logger, revoked func(*x509.Certificate) (string, bool)) *authHook {
	return &authHook{root: root, log: log, revoked: revoked, current: make(map[string]*mqtt.Client)}
}

func (h *authHook) ID() string { return "thermo-auth" }

func (h *authHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnConnectAuthenticate,
		mqtt.OnACLCheck,
		mqtt.OnPublish,
		mqtt.OnSessionEstablish,
		mqtt.OnSessionEstablished,
		mqtt.OnDisconnect,
		mqtt.OnWill,
	}, []byte{b})
}

func (h *authHook) setOnClient(fn func(id string, connected bool)) {
	if fn == nil {
		h.onClient.Store(nil)
		return
	}
	h.onClient.Store(&fn)
}

// OnConnectAuthenticate admits a client whose verified certificate CN is a
// device id or a controller's name (protocol.IsControllerID) equal to its
// MQTT client id, and whose will (if any) is a publish it may make. The TLS
// listener has already verified the certificate chain.
func (h *authHook) OnConnectAuthenticate(cl *mqtt.Client, pk packets.Packet) bool {
	id, err := h.identify(cl, pk)
	if err != nil {
		h.log.Warn("connection refused", "remote", cl.Net.Remote, "client_id", pk.Connect.ClientIdentifier, "reason", err)
		return false
	}
	h.log.Debug("client authenticated", "client", id, "remote", cl.Net.Remote)
	return true
}

func (h *authHook) identify(cl *mqtt.Client, pk packets.Packet) (string, error) {
	tc, ok := cl.Net.Conn.(*tls.Conn)
	if !ok {
		return "", errors.New("not a TLS connection")
	}
	cn, err := provisioning.PeerCommonName(tc.ConnectionState())
	if err != nil {
		return "", err
	}
	revoked := h.isRevoked(tc)
	switch {
	case reservedIDs[cn]:
		return "", fmt.Errorf("certificate CN %q is reserved", cn)
	case !protocol.IsControllerID(cn) && protocol.CheckDeviceID(cn) != nil:
		return "", fmt.Errorf("certificate CN %q is not a valid device id or controller name: %w", cn, protocol.CheckDeviceID(cn))
	case revoked != "":
		return "", fmt.Errorf("certificate of %q is revoked: %s", cn, revoked)
	case pk.Connect.ClientIdentifier != cn:
		return "", fmt.Errorf("client id %q does not match certificate CN %q", pk.Connect.ClientIdentifier, cn)
	case pk.Connect.WillFlag && !protocol.MayPublish(h.root, cn, pk.Connect.WillTopic, pk.Connect.WillRetain):
		// mochi sends wills without an ACL check: stop them here.
		return "", fmt.Errorf("will topic %q (retained %v) is not a topic %q may publish", pk.Connect.WillTopic, pk.Connect.WillRetain, cn)
	}
	return cn, nil
}

// OnACLCheck answers for subscriptions and deliveries (write false). For
// publishes (write true) it always allows: mochi disconnects an MQTT 3.1.1
// client whose QoS 1 publish is denied here, and paho then resends that
// publish after every reconnect, forever. OnPublish enforces the ACL for
// publishes instead, acknowledging and dropping as Mosquitto does.
func (h *authHook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	if write {
		return true
	}
	if cl.Net.Inline {
		return true
	}
	return h.maySubscribe(cl.ID, topic)
}

// OnPublish drops (after acknowledging) a publish the client may not make:
// a topic outside the contract's topics of its own id, or the RETAIN flag
// where the contract says not retained. Nothing of it is delivered or
// retained. It sees the topic after alias resolution, so an MQTT 5 topic
// alias cannot get around it.
func (h *authHook) OnPublish(cl *mqtt.Client, pk packets.Packet) (packets.Packet, error) {
	if cl.Net.Inline || h.mayPublish(cl.ID, pk.TopicName, pk.FixedHeader.Retain) {
		return pk, nil
	}
	h.log.Warn("publish dropped: not a publish the client may make", "client", cl.ID, "topic", pk.TopicName, "qos", pk.FixedHeader.Qos, "retain", pk.FixedHeader.Retain)
	return pk, packets.CodeSuccessIgnore
}

// mayPublish is protocol.MayPublish under the broker's root, for a client id
// the broker does not reserve.
func (h *authHook) mayPublish(id, topic string, retain bool) bool {
	return !reservedIDs[id] && protocol.MayPublish(h.root, id, topic, retain)
}

// maySubscribe is protocol.MaySubscribe under the broker's root, for a
// client id the broker does not reserve. mochi asks it for subscription
// filters and for the topics of deliveries alike.
func (h *authHook) maySubscribe(id, filter string) bool {
	return !reservedIDs[id] && protocol.MaySubscribe(h.root, id, filter)
}

// underRoot reports whether topic is prefix or below it.
func underRoot(prefix, topic string) bool {
	return topic == prefix || strings.HasPrefix(topic, prefix+"/")
}

func (h *authHook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	// Recorded before the older connection of the same id is disconnected,
	// so its OnWill and OnDisconnect see it was replaced.
	h.mu.Lock()
	prev := h.current[cl.ID]
	h.current[cl.ID] = cl
	h.mu.Unlock()
	if prev != nil && !prev.Closed() && h.identity != nil {
		h.identity.taken(cl.ID, prev.Net.Remote, cl.Net.Remote)
	}
	if h.gate != nil {
		h.gate.establish(cl)
	}
}

// replaced reports whether a newer connection with cl's id has taken over
// its session.
func (h *authHook) replaced(cl *mqtt.Client) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	cur, ok := h.current[cl.ID]
	return ok && cur != cl
}

// OnWill suppresses the will of a connection whose client has already
// reconnected: mochi sends it when it disconnects the old connection on
// takeover, and it could then land after the new connection's "online".
// An empty will topic makes mochi's publish of it go nowhere.
func (h *authHook) OnWill(cl *mqtt.Client, will mqtt.Will) (mqtt.Will, error) {
	if h.replaced(cl) {
		h.log.Info("will suppressed: the client has reconnected", "client", cl.ID, "topic", will.TopicName)
		return mqtt.Will{}, nil
	}
	return will, nil
}

func (h *authHook) OnSessionEstablished(cl *mqtt.Client, _ packets.Packet) {
	resumed := false
	if tc, ok := cl.Net.Conn.(*tls.Conn); ok {
		resumed = tc.ConnectionState().DidResume
	}
	h.log.Info("client connected", "client", cl.ID, "remote", cl.Net.Remote, "clean_session", cl.Properties.Clean, "tls_resumed", resumed)
	if h.identity != nil {
		h.identity.established(cl.ID)
	}
	if fn := h.onClient.Load(); fn != nil {
		(*fn)(cl.ID, true)
	}
}

func (h *authHook) OnDisconnect(cl *mqtt.Client, err error, _ bool) {
	if cl.Net.Inline {
		return
	}
	h.mu.Lock()
	live := h.current[cl.ID] == cl
	if live {
		delete(h.current, cl.ID)
	}
	h.mu.Unlock()
	if !live {
		// Restored from the store at start, or replaced by a newer
		// connection of the same client.
		return
	}
	h.log.Info("client disconnected", "client", cl.ID, "remote", cl.Net.Remote, "cause", err)
	if fn := h.onClient.Load(); fn != nil {
		(*fn)(cl.ID, false)
	}
}

// verifyResumed is the listener's tls.Config.VerifyConnection. Go calls
// it after every handshake, and it is the only check Go calls on a
// resumed session (VerifyPeerCertificate is not): a device revoked since
// its ticket was issued is refused here, in the handshake, before it can
// send anything. Go itself refuses to resume a chain that has expired or
// whose root the broker no longer trusts (tickets.go); a full handshake is
// checked as before, revocation at CONNECT (identify), where the reason
// is logged with the client id.
func (h *authHook) verifyResumed(cs tls.ConnectionState) error {
	if !cs.DidResume {
		return nil
	}
	if len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return errors.New("resumed TLS session without a verified client certificate")
	}
	if h.revoked == nil {
		return nil
	}
	leaf := cs.VerifiedChains[0][0]
	if reason, revoked := h.revoked(leaf); revoked {
		if reason == "" {
			reason = "revoked"
		}
		return fmt.Errorf("resumed TLS session of %q refused: certificate revoked: %s", leaf.Subject.CommonName, reason)
	}
	return nil
}

// isRevoked returns why the verified client certificate of tc is revoked,
// "" when it is not.
func (h *authHook) isRevoked(tc *tls.Conn) string {
	if h.revoked == nil {
		return ""
	}
	st := tc.ConnectionState()
	if len(st.VerifiedChains) == 0 || len(st.VerifiedChains[0]) == 0 {
		return ""
	}
	reason, revoked := h.revoked(st.VerifiedChains[0][0])
	if !revoked {
		return ""
	}
	if reason == "" {
		reason = "revoked"
	}
	return reason
}
