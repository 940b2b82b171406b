package broker

import (
	"errors"
	"reflect"
	"sync/atomic"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
)

// mochi v2.7.9 looks for expired retained messages once a second
// (Server.clearExpiredRetainedMessages), and to do so copies every retained
// message under the lock that every retained publish also needs
// (packets.Packets.GetAll). A fleet keeps three retained messages a device:
// at 10,000 devices that copy was two thirds of everything the broker's
// process allocated in the steady state and 16 % of its CPU, and during a
// fleet's return it held every device's retained Event waiting for the
// copy (the lock was 96 % of the process's mutex waits; docs/scale.md).
//
// It does nothing in our broker unless some retained message can expire:
// MaximumMessageExpiryInterval is 0 (a retained Command stands until it is
// replaced), so only a message published with MQTT 5's message expiry
// interval can, and the fleet's clients speak MQTT 3.1.1. So the broker
// stops mochi's ticker, and starts it again, at mochi's one second, the
// first time a retained message with an expiry is published: expiry works
// exactly as before for whoever uses it. (A retained message restored from
// the store never expires, here as in mochi's own bolt hook: mochi's
// storage.Message keeps no expiry.)
//
// mochi offers no option for this. The ticker is reached by reflection
// (retainedExpiryTicker); if a later mochi lays out its Server otherwise,
// the ticker is left running, the broker logs why, and TestRetainedExpiry
// fails.

// retainedExpiry stops mochi's retained-expiry ticker until a retained
// message that can expire is seen.
type retainedExpiry struct {
	mqtt.HookBase
	ticker *time.Ticker
	on     atomic.Bool // the ticker runs
}

// retainedExpiryTicker is mochi's Server.loop.retainedExpiry.
func retainedExpiryTicker(srv *mqtt.Server) (*time.Ticker, error) {
	loop := reflect.ValueOf(srv).Elem().FieldByName("loop")
	if loop.Kind() != reflect.Pointer || loop.IsNil() || loop.Elem().Kind() != reflect.Struct {
		return nil, errors.New("mochi's Server has no loop field of the expected type")
	}
	f := loop.Elem().FieldByName("retainedExpiry")
	if f.Type() != reflect.TypeFor[*time.Ticker]() || f.IsNil() {
		return nil, errors.New("mochi's Server.loop has no retainedExpiry ticker")
	}
	return (*time.Ticker)(f.UnsafePointer()), nil
}

// newRetainedExpiry stops srv's retained-expiry ticker and returns the
// hook that starts it again.
func newRetainedExpiry(srv *mqtt.Server) (*retainedExpiry, error) {
	t, err := retainedExpiryTicker(srv)
	if err != nil {
		return nil, err
	}
	t.Stop()
	return &retainedExpiry{ticker: t}, nil
}

// ID, Provides and OnRetainMessage implement mqtt.Hook.

func (h *retainedExpiry) ID() string { return "retained-expiry" }

func (h *retainedExpiry) Provides(b byte) bool { return b == mqtt.OnRetainMessage }

func (h *retainedExpiry) OnRetainMessage(_ *mqtt.Client, pk packets.Packet, r int64) {
	if r == 1 {
		h.saw(pk)
	}
}

// saw starts the ticker if pk can expire (mochi has set its Expiry).
func (h *retainedExpiry) saw(pk packets.Packet) {
	if pk.Expiry > 0 && h.on.CompareAndSwap(false, true) {
		h.ticker.Reset(time.Second)
	}
}
