package broker

import (
	"bytes"
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

// storeHook is the embedded broker's persistence: mochi's bolt storage
// hook (v2.7.9), same file layout and records, with these repairs:
//
//   - Writes are group-committed (kvStore): mochi's hook commits every
//     client record and retained message in a transaction of its own, one
//     fsync each, and a returning fleet queued there one device at a time.
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
//     each write was a transaction with an fsync, several per device at
//     every reconnect.
type storeHook struct {
	mqtt.HookBase
	kv  *kvStore
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
	// endedAtLoad: clients whose records StoredClients deleted, all in one
	// transaction. mochi then calls OnDisconnect for each, one after
	// another, and a delete each waiting for its own commit kept a broker
	// with 10,000 clients in its store 11 s from listening.
	endedAtLoad map[string]bool
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
	return &storeHook{log: log, replaced: replaced}
}

func (h *storeHook) ID() string { return "thermo-store" }

// Provides lists the hooks mochi's bolt hook provides.
func (h *storeHook) Provides(b byte) bool {
	return bytes.Contains([]byte{
		mqtt.OnSessionEstablished, mqtt.OnDisconnect, mqtt.OnSubscribed, mqtt.OnUnsubscribed,
		mqtt.OnRetainMessage, mqtt.OnWillSent, mqtt.OnQosPublish, mqtt.OnQosComplete, mqtt.OnQosDropped,
		mqtt.OnSysInfoTick, mqtt.OnClientExpired, mqtt.OnRetainedExpired,
		mqtt.StoredClients, mqtt.StoredInflightMessages, mqtt.StoredRetainedMessages,
		mqtt.StoredSubscriptions, mqtt.StoredSysInfo,
	}, []byte{b})
}

// defaultBucket is mochi's bolt hook's bucket.
const defaultBucket = "mochi"

// Init opens the store; config is mochi's *bolt.Options (Path, Bucket and
// bbolt's options).
func (h *storeHook) Init(config any) error {
	o, ok := config.(*bolt.Options)
	if !ok || o == nil || o.Path == "" {
		return fmt.Errorf("store hook: want *bolt.Options with a Path, got %T", config)
	}
	bucket := o.Bucket
	if bucket == "" {
		bucket = defaultBucket
	}
	kv, err := openKV(o.Path, bucket, o.Options)
	if err != nil {
		return err
	}
	h.kv = kv
	return nil
}

// put stores v under key and waits until it is durable; errors are logged
// (mochi's hooks cannot return them).
func (h *storeHook) put(key string, v storage.Serializable) {
	h.wait(key, h.enqueuePut(key, v))
}

func (h *storeHook) enqueuePut(key string, v storage.Serializable) <-chan error {
	data, err := v.MarshalBinary()
	if err != nil {
		ch := make(chan error, 1)
		ch <- err
		return ch
	}
	return h.kv.enqueue(kvOp{key: []byte(key), val: data})
}

func (h *storeHook) del(key string) { h.wait(key, h.enqueueDel(key)) }

func (h *storeHook) enqueueDel(key string) <-chan error {
	return h.kv.enqueue(kvOp{key: []byte(key)})
}

func (h *storeHook) wait(key string, done <-chan error) {
	if err := <-done; err != nil {
		h.log.Error("broker store: write failed", "key", key, "error", err)
	}
}

// Keys of mochi's layout.
func clientKey(id string) string { return storage.ClientKey + "_" + id }
func subscriptionKey(id, filter string) string {
	return storage.SubscriptionKey + "_" + id + ":" + filter
}
func retainedKey(topic string) string { return storage.RetainedKey + "_" + topic }
func inflightKey(id string, pk packets.Packet) string {
	return storage.InflightKey + "_" + id + ":" + pk.FormatID()
}

// clientRecord is mochi's stored client record of cl as it is now.
func clientRecord(cl *mqtt.Client) *storage.Client {
	props := cl.Properties.Props.Copy(false)
	return &storage.Client{
		ID:              cl.ID,
		T:               storage.ClientKey,
		Remote:          cl.Net.Remote,
		Listener:        cl.Net.Listener,
		Username:        cl.Properties.Username,
		Clean:           cl.Properties.Clean,
		ProtocolVersion: cl.Properties.ProtocolVersion,
		Properties: storage.ClientProperties{
			SessionExpiryInterval: props.SessionExpiryInterval,
			AuthenticationMethod:  props.AuthenticationMethod,
			AuthenticationData:    props.AuthenticationData,
			RequestProblemInfo:    props.RequestProblemInfo,
			RequestResponseInfo:   props.RequestResponseInfo,
			ReceiveMaximum:        props.ReceiveMaximum,
			TopicAliasMaximum:     props.TopicAliasMaximum,
			User:                  props.User,
			MaximumPacketSize:     props.MaximumPacketSize,
		},
		Will: storage.ClientWill(cl.Properties.Will),
	}
}

// messageRecord is mochi's stored form of a retained or queued message.
func messageRecord(key, kind, client string, pk packets.Packet, sent int64) *storage.Message {
	props := pk.Properties.Copy(false)
	return &storage.Message{
		ID:          key,
		T:           kind,
		Client:      client,
		Origin:      pk.Origin,
		FixedHeader: pk.FixedHeader,
		TopicName:   pk.TopicName,
		Payload:     pk.Payload,
		Sent:        sent,
		Created:     pk.Created,
		Properties: storage.MessageProperties{
			PayloadFormat:          props.PayloadFormat,
			MessageExpiryInterval:  props.MessageExpiryInterval,
			ContentType:            props.ContentType,
			ResponseTopic:          props.ResponseTopic,
			CorrelationData:        props.CorrelationData,
			SubscriptionIdentifier: props.SubscriptionIdentifier,
			TopicAlias:             props.TopicAlias,
			User:                   props.User,
		},
	}
}

// Hooks mochi's bolt hook implemented, on the group-committed store.

func (h *storeHook) boltSubscribed(cl *mqtt.Client, pk packets.Packet, codes []byte) {
	for i, f := range pk.Filters {
		key := subscriptionKey(cl.ID, f.Filter)
		h.put(key, &storage.Subscription{
			ID: key, T: storage.SubscriptionKey, Client: cl.ID, Qos: codes[i], Filter: f.Filter,
			Identifier: f.Identifier, NoLocal: f.NoLocal, RetainHandling: f.RetainHandling, RetainAsPublished: f.RetainAsPublished,
		})
	}
}

func (h *storeHook) boltUnsubscribed(id string, pk packets.Packet) {
	for _, f := range pk.Filters {
		h.del(subscriptionKey(id, f.Filter))
	}
}

func (h *storeHook) boltQosComplete(id string, pk packets.Packet) { h.del(inflightKey(id, pk)) }

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
	if h.kv == nil {
		return nil
	}
	return h.kv.close()
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
	h.open(func() { h.boltSubscribed(cl, pk, codes) })
}

func (h *storeHook) OnUnsubscribed(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.boltUnsubscribed(cl.ID, pk) })
}

func (h *storeHook) OnRetainMessage(cl *mqtt.Client, pk packets.Packet, r int64) {
	h.open(func() {
		key := retainedKey(pk.TopicName)
		if r == -1 {
			h.del(key)
			return
		}
		h.put(key, messageRecord(key, storage.RetainedKey, cl.ID, pk, 0))
	})
}

func (h *storeHook) OnQosPublish(cl *mqtt.Client, pk packets.Packet, sent int64, resends int) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() {
		key := inflightKey(cl.ID, pk)
		h.put(key, messageRecord(key, storage.InflightKey, cl.ID, pk, sent))
	})
}

func (h *storeHook) OnQosComplete(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.boltQosComplete(cl.ID, pk) })
}

func (h *storeHook) OnQosDropped(cl *mqtt.Client, pk packets.Packet) {
	if sessionEnds(cl) {
		return
	}
	h.open(func() { h.boltQosComplete(cl.ID, pk) })
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
	h.open(func() { h.del(clientKey(cl.ID)) })
}

func (h *storeHook) OnRetainedExpired(filter string) {
	h.open(func() { h.del(retainedKey(filter)) })
}

// OnSessionEstablished stores the new connection's client record (its will
// included). The write is queued under recMu, so it is ordered against an
// older connection's deletion or rewrite, and waited for outside it, so
// connections share a commit.
func (h *storeHook) OnSessionEstablished(cl *mqtt.Client, pk packets.Packet) {
	h.open(func() {
		key := clientKey(cl.ID)
		h.recMu.Lock()
		done := h.enqueuePut(key, clientRecord(cl))
		h.recMu.Unlock()
		h.wait(key, done)
	})
}

// OnDisconnect deletes the record of an ended clean session, as mochi's
// hook does, and rewrites the record of a persistent one so it no longer
// holds the will: mochi's hook leaves it there after a clean disconnect,
// and the will would be taken for a crash's after the next restart.
func (h *storeHook) OnDisconnect(cl *mqtt.Client, err error, expire bool) {
	if expire && h.takeEndedAtLoad(cl.ID) {
		return // its record went with StoredClients' batch
	}
	h.open(func() {
		key := clientKey(cl.ID)
		h.recMu.Lock()
		if h.replaced(cl) {
			h.recMu.Unlock()
			return
		}
		var done <-chan error
		switch {
		case !expire:
			done = h.enqueuePut(key, clientRecord(cl)) // rewritten as cl is now: no will
		case cl.StopCause() != packets.ErrSessionTakenOver: // as mochi's hook
			done = h.enqueueDel(key)
		}
		h.recMu.Unlock()
		if done != nil {
			h.wait(key, done)
		}
		h.log.Debug("stored session ended", "client", cl.ID, "session_kept", !expire)
	})
}

// takeEndedAtLoad reports, once, whether StoredClients deleted id's record.
func (h *storeHook) takeEndedAtLoad(id string) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.endedAtLoad[id] {
		return false
	}
	delete(h.endedAtLoad, id)
	return true
}

// OnWillSent records that the will went out, unless the session has
// already passed to a newer connection.
func (h *storeHook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.open(func() {
		key := clientKey(cl.ID)
		h.recMu.Lock()
		if h.replaced(cl) {
			h.recMu.Unlock()
			return
		}
		done := h.enqueuePut(key, clientRecord(cl))
		h.recMu.Unlock()
		h.wait(key, done)
	})
}

// StoredClients is called first when mochi loads the store.
func (h *storeHook) StoredClients() ([]storage.Client, error) {
	var clients []storage.Client
	if err := h.kv.iter(storage.ClientKey, func(v []byte) error {
		var c storage.Client
		if err := c.UnmarshalBinary(v); err != nil {
			h.log.Warn("broker store: skipping an unreadable record", "error", err)
			return nil
		}
		clients = append(clients, c)
		return nil
	}); err != nil {
		return clients, fmt.Errorf("stored clients: %w", err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.persistent = make(map[string]bool, len(clients))
	h.endedAtLoad = map[string]bool{}
	var ended []kvOp
	defer func() {
		if len(ended) > 0 {
			h.wait(fmt.Sprintf("%d ended sessions' records", len(ended)), h.kv.enqueue(ended...))
		}
	}()
	for _, c := range clients {
		h.persistent[c.ID] = !endsWithConnection(c.ProtocolVersion, c.Properties.SessionExpiryInterval, c.Clean)
		if !h.persistent[c.ID] {
			// mochi drops it (loadClients): delete its record now,
			// with every other one, rather than one by one.
			ended = append(ended, kvOp{key: []byte(clientKey(c.ID))})
			h.endedAtLoad[c.ID] = true
		}
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
	subs, err := h.rawSubscriptions()
	if err != nil {
		return subs, err
	}
	h.mu.Lock()
	persistent := h.persistent
	h.endedAtLoad = nil // loadClients is done with them
	h.mu.Unlock()
	if persistent == nil { // clients not loaded first: nothing to judge by
		return subs, nil
	}
	var drop []kvOp
	defer func() { h.dropAll("stored subscriptions of ended sessions", drop) }()
	kept := subs[:0]
	for _, s := range subs {
		if persistent[s.Client] {
			kept = append(kept, s)
			continue
		}
		h.log.Debug("dropping stored subscription of an ended session", "client", s.Client, "filter", s.Filter)
		drop = append(drop, kvOp{key: []byte(subscriptionKey(s.Client, s.Filter))})
	}
	return kept, nil
}

// StoredInflightMessages restores the packet ids of queued messages, and
// drops and deletes those queued for sessions that did not survive.
func (h *storeHook) StoredInflightMessages() ([]storage.Message, error) {
	msgs, err := h.storedMessages(storage.InflightKey)
	if err != nil {
		return msgs, fmt.Errorf("stored queued messages: %w", err)
	}
	h.mu.Lock()
	persistent := h.persistent
	h.mu.Unlock()
	var drop []kvOp
	defer func() { h.dropAll("stored queued messages of ended sessions", drop) }()
	kept := msgs[:0]
	for _, m := range msgs {
		id, err := inflightID(m.ID)
		if err != nil {
			h.log.Warn("dropping a stored queued message with an unreadable key", "key", m.ID, "error", err)
			continue
		}
		m.PacketID = id
		if persistent != nil && !persistent[m.Client] {
			drop = append(drop, kvOp{key: []byte(inflightKey(m.Client, packets.Packet{PacketID: m.PacketID}))})
			continue
		}
		kept = append(kept, m)
	}
	return kept, nil
}

// dropAll deletes what ops name, in one transaction.
func (h *storeHook) dropAll(what string, ops []kvOp) {
	if len(ops) > 0 {
		h.wait(fmt.Sprintf("%d %s", len(ops), what), h.kv.enqueue(ops...))
	}
}

// rawSubscriptions reads every stored subscription, as stored.
func (h *storeHook) rawSubscriptions() ([]storage.Subscription, error) {
	var subs []storage.Subscription
	if err := h.kv.iter(storage.SubscriptionKey, func(v []byte) error {
		var s storage.Subscription
		if err := s.UnmarshalBinary(v); err != nil {
			h.log.Warn("broker store: skipping an unreadable record", "error", err)
			return nil
		}
		subs = append(subs, s)
		return nil
	}); err != nil {
		return subs, fmt.Errorf("stored subscriptions: %w", err)
	}
	return subs, nil
}

// StoredRetainedMessages returns the stored retained messages.
func (h *storeHook) StoredRetainedMessages() ([]storage.Message, error) {
	msgs, err := h.storedMessages(storage.RetainedKey)
	if err != nil {
		return msgs, fmt.Errorf("stored retained messages: %w", err)
	}
	return msgs, nil
}

func (h *storeHook) storedMessages(kind string) ([]storage.Message, error) {
	var msgs []storage.Message
	err := h.kv.iter(kind, func(v []byte) error {
		var m storage.Message
		if err := m.UnmarshalBinary(v); err != nil {
			h.log.Warn("broker store: skipping an unreadable record", "error", err)
			return nil
		}
		msgs = append(msgs, m)
		return nil
	})
	return msgs, err
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
