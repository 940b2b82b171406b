package broker

import (
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/hooks/storage"
	"github.com/mochi-mqtt/server/v2/hooks/storage/bolt"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/mochi-mqtt/server/v2/system"
)

// storeHook is mochi's bolt storage hook (v2.7.9) with these repairs:
//
//   - Messages queued for a persistent session are stored without their
//     packet id, and restored with id 0: mochi then fails the session's
//     next connection ("resend inflight: protocol violation: missing packet
//     id"), and every one after it. The id is restored from the record key.
//   - mochi drops a stored clean-session client when it loads the store, but
//     then loads that client's stored subscriptions into the topic index
//     anyway. They stay there for good, and the client receives messages
//     for filters it never subscribed to on its next connection. Such
//     subscriptions (and queued messages) are dropped and deleted here.
//   - A persistent session's record keeps its will after a clean
//     disconnect; it is rewritten without it here.
//   - The wills of clients that were connected when the broker died are
//     collected, so the broker can publish them (their connection did end
//     abruptly).
//   - The broker's $SYS counters are not stored (see OnSysInfoTick).
//   - mochi stops the hook (closing the database) while its housekeeping
//     loop may still call it; calls after Stop are ignored here.
//   - The subscriptions and in-flight messages of a session that ends with
//     its connection (every client of this product: clean sessions) are
//     not written at all: they could never be restored (see above), and
//     each write is a transaction with an fsync, several per device at
//     every reconnect, all of a returning fleet's in one queue.
type storeHook struct {
	*bolt.Hook
	log *slog.Logger

	// replaced reports whether a newer connection of the same client id
	// has taken over cl's session: the stored record is then the newer
	// connection's, and cl must not overwrite or delete it.
	replaced func(cl *mqtt.Client) bool
	recMu    sync.Mutex // orders record writes against that check

	stopMu  sync.RWMutex // held for reading by every call into the database
	stopped bool

	mu         sync.Mutex
	persistent map[string]bool // stored client id -> its session outlives a disconnect
	wills      []restoredWill
}

// restoredWill is the will of a client whose connection the broker's last
// crash cut.
type restoredWill struct {
	client, topic string
	payload       []byte
	qos           byte
	retain        bool
}

func newStoreHook(log *slog.Logger, replaced func(*mqtt.Client) bool) *storeHook {
	return &storeHook{Hook: new(bolt.Hook), log: log, replaced: replaced}
}

func (h *storeHook) ID() string { return "thermo-store" }

// open runs f unless the hook has been stopped, and keeps Stop waiting
// until f returns.
func (h *storeHook) open(f func()) {
	h.stopMu.RLock()
	defer h.stopMu.RUnlock()
	if !h.stopped {
		f()
	}
}

// Stop closes the database once no call is using it.
func (h *storeHook) Stop() error {
	h.stopMu.Lock()
	defer h.stopMu.Unlock()
	if h.stopped {
		return nil
	}
	h.stopped = true
	return h.Hook.Stop()
}

// sessionEnds reports whether cl's session ends with its connection.
func sessionEnds(cl *mqtt.Client) bool {
	return endsWithConnection(cl.Properties.ProtocolVersion, cl.Properties.Props.SessionExpiryInterval, cl.Properties.Clean)
}

// endsWithConnection is the rule mochi applies to decide whether a session
// ends with its connection: MQTT 5 by the session expiry, earlier versions
// by the clean-session flag.
func endsWithConnection(protocolVersion byte, sessionExpiry uint32, clean bool) bool {
	if protocolVersion == 5 {
		return sessionExpiry == 0
	}
	return clean
}

func (h *storeHook) OnSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.Hook.OnSubscribed(cl, pk, codes) })
}

func (h *storeHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.Hook.OnUnsubscribed(cl, pk) })
}

func (h *storeHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	h.open(func() { h.Hook.OnRetainMessage(cl, pk, r) })
}

func (h *storeHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.Hook.OnQosPublish(cl, pk, sent, resends) })
}

func (h *storeHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.Hook.OnQosComplete(cl, pk) })
}

func (h *storeHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.Hook.OnQosDropped(cl, pk) })
}

// OnSysInfoTick and StoredSysInfo keep mochi's $SYS counters out of the
// store: nothing in the product reads them after a restart, each tick was a
// write, and reading the key from a fresh store logged "failed to get
// data key=SYS" at ERROR on every first start.
func (h *storeHook) OnSysInfoTick(*system.Info) {}

func (h *storeHook) StoredSysInfo() (storage.SystemInfo, error) {
	return storage.SystemInfo{}, nil
}

func (h *storeHook) OnClientExpired(cl *mqtt.Client) {
	h.open(func() { h.Hook.OnClientExpired(cl) })
}

func (h *storeHook) OnRetainedExpired(filter string) {
	h.open(func() { h.Hook.OnRetainedExpired(filter) })
}

// OnSessionEstablished stores the new connection's client record (its will
// included).
func (h *storeHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.open(func() {
		h.recMu.Lock()
		defer h.recMu.Unlock()
		h.Hook.OnSessionEstablished(cl, pk)
	})
}

// OnDisconnect deletes the record of an ended clean session, as mochi's
// hook does, and rewrites the record of a persistent one so it no longer
// holds the will: mochi's hook leaves it there after a clean disconnect,
// and the will would be taken for a crash's after the next restart.
func (h *storeHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	h.open(func() {
		h.recMu.Lock()
		defer h.recMu.Unlock()
		if h.replaced(cl) {
			return
		}
		if expire {
			h.Hook.OnDisconnect(cl, err, expire)
		} else {
			h.Hook.OnWillSent(cl, packets.Packet{}) // rewrites the record as cl is now
		}
		h.log.Debug("stored session ended", "client", cl.ID, "session_kept", !expire)
	})
}

// OnWillSent records that the will went out, unless the session has
// already passed to a newer connection.
func (h *storeHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.open(func() {
		h.recMu.Lock()
		defer h.recMu.Unlock()
		if h.replaced(cl) {
			return
		}
		h.Hook.OnWillSent(cl, pk)
	})
}

// StoredClients is called first when mochi loads the store.
func (h *storeHook) StoredClients() ([]storage.Client, error) {
	clients, err := h.Hook.StoredClients()
	if err != nil {
		return clients, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.persistent = make(map[string]bool, len(clients))
	for _, c := range clients {
		h.persistent[c.ID] = !endsWithConnection(c.ProtocolVersion, c.Properties.SessionExpiryInterval, c.Clean)
		// mochi clears a will's flag in the store once the will is sent
		// (or the client disconnects cleanly), so a set flag means the
		// client was connected when the broker died.
		if c.Will.Flag != 0 && c.Will.TopicName != "" {
			h.wills = append(h.wills, restoredWill{
				client:  c.ID,
				topic:   c.Will.TopicName,
				payload: c.Will.Payload,
				qos:     c.Will.Qos,
				retain:  c.Will.Retain,
			})
		}
	}
	return clients, nil
}

// StoredSubscriptions drops the subscriptions of clients whose session did
// not survive (see storeHook), and deletes them from the store.
func (h *storeHook) StoredSubscriptions() ([]storage.Subscription, error) {
	subs, err := h.Hook.StoredSubscriptions()
	if err != nil {
		return subs, err
	}
	h.mu.Lock()
	persistent := h.persistent
	h.mu.Unlock()
	if persistent == nil { // clients not loaded first: nothing to judge by
		return subs, nil
	}
	kept := subs[:0]
	for _, s := range subs {
		if persistent[s.Client] {
			kept = append(kept, s)
			continue
		}
		h.log.Debug("dropping stored subscription of an ended session", "client", s.Client, "filter", s.Filter)
		h.Hook.OnUnsubscribed(&mqtt.Client{ID: s.Client}, packets.Packet{
			Filters: packets.Subscriptions{{Filter: s.Filter}},
		})
	}
	return kept, nil
}

// StoredInflightMessages restores the packet ids of queued messages, and
// drops and deletes those queued for sessions that did not survive.
func (h *storeHook) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.Hook.StoredInflightMessages()
	if err != nil {
		return msgs, err
	}
	h.mu.Lock()
	persistent := h.persistent
	h.mu.Unlock()
	kept := msgs[:0]
	for _, m := range msgs {
		id, err := inflightID(m.ID)
		if err != nil {
			h.log.Warn("dropping a stored queued message with an unreadable key", "key", m.ID, "error", err)
			continue
		}
		m.PacketID = id
		if persistent != nil && !persistent[m.Client] {
			h.Hook.OnQosComplete(&mqtt.Client{ID: m.Client}, packets.Packet{PacketID: m.PacketID})
			continue
		}
		kept = append(kept, m)
	}
	return kept, nil
}

// inflightID reads the packet id from the key of a stored queued message:
// "IFM_<client id>:<packet id>".
func inflightID(key string) (uint16, error) {
	i := strings.LastIndexByte(key, ':')
	if i < 0 {
		return 0, fmt.Errorf("no packet id in key %q", key)
	}
	id, err := strconv.ParseUint(key[i+1:], 10, 16)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("bad packet id in key %q", key)
	}
	return uint16(id), nil
}

// takeWills returns the collected wills once.
func (h *storeHook) takeWills() []restoredWill {
	h.mu.Lock()
	defer h.mu.Unlock()
	w := h.wills
	h.wills = nil
	return w
}
