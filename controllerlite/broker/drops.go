package broker

import (
	"bytes"
	"log/slog"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// dropLogInterval is the least time between two log lines about dropped
// packets: a controller following a large fleet over the network with
// too small a queue drops thousands in a second.
const dropLogInterval = time.Second

// dropHook logs the packets mochi drops because a client's write queue
// (Options.ClientQueue) was full. mochi counts them too
// (Stats.MessagesDropped, the broker_messages_dropped_total metric); the
// log says which client, and what to change.
type dropHook struct {
	mqtt.HookBase
	log   *slog.Logger
	queue int

	mu      sync.Mutex
	last    time.Time // when the last line was logged
	skipped int       // drops since then that were not logged
}

func newDropHook(log *slog.Logger, queue int) *dropHook {
	return &dropHook{log: log, queue: queue}
}

func (h *dropHook) ID() string { return "thermo-drops" }

func (h *dropHook) Provides(b byte) bool {
	return bytes.Contains([]byte{mqtt.OnPublishDropped}, []byte{b})
}

// OnPublishDropped logs the drop, at most once per dropLogInterval, with
// the drops left unlogged since the previous line. It runs on the
// publisher's goroutine: it only takes a lock.
func (h *dropHook) OnPublishDropped(cl *mqtt.Client, pk packets.Packet) {
	h.mu.Lock()
	now := time.Now()
	if now.Sub(h.last) < dropLogInterval {
		h.skipped++
		h.mu.Unlock()
		return
	}
	skipped := h.skipped
	h.last, h.skipped = now, 0
	h.mu.Unlock()
	h.log.Warn("broker: packet dropped, the client's write queue is full (a controller on the network following a large fleet needs --broker-client-queue of three per device)",
		"client", cl.ID, "topic", pk.TopicName, "queue", h.queue, "dropped_unlogged_before", skipped)
}
