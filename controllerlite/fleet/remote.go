package fleet

import (
	"context"
	"fmt"

	"github.com/thermofleet/thermo/transport"
)

// Connect makes the transport client that links f to an external broker.
// It sets o's Handler, OnConnect and OnDisconnect; the caller runs the
// client (Run) and so owns the connection's lifetime. A Handler already in
// o receives the messages of the subscriptions the caller adds itself
// (certificate requests): every topic whose kind the fleet does not read.
//
// On a connection made before f is ready, OnConnect subscribes to f's
// filters itself and waits for each acknowledgement, so the quiet period
// that ends the wait for retained messages starts after the broker has
// accepted the subscriptions. Later connections are subscribed by the
// client, which renews every filter on every connection.
func Connect(f *Fleet, o transport.Options) (*transport.Client, error) {
	other := o.Handler
	o.Handler = func(m transport.Message) {
		if other != nil && !f.reads(m.Topic) {
			other(m)
			return
		}
		f.Receive(m.Topic, m.Payload, m.Retained)
	}
	o.OnConnect = func(_ context.Context, c *transport.Client) {
		if !f.IsReady() {
			for _, filter := range f.Filters() {
				if err := c.Subscribe(filter, 1); err != nil {
					// Not ready without the retained state: wait
					// for the next connection, which subscribes
					// again.
					f.log.Error("subscribe on the external broker: the controller cannot be ready without it", "filter", filter, "error", err)
					return
				}
			}
		}
		f.LinkUp(c, false)
	}
	o.OnDisconnect = f.LinkDown
	c, err := transport.New(o)
	if err != nil {
		return nil, fmt.Errorf("connect to the external broker: %w", err)
	}
	return c, nil
}
