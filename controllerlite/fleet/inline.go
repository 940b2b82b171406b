package fleet

import (
	"context"
	"fmt"

	"github.com/thermofleet/thermo/controllerlite/broker"
)

// AttachBroker links f to the embedded broker in-process: it subscribes to
// f's filters (the broker hands over every retained message during
// Subscribe) and then reports the link up with the retained state read.
// The broker must be started; the link lasts as long as the broker.
func AttachBroker(f *Fleet, b *broker.Broker) error {
	for _, filter := range f.Filters() {
		if err := b.Subscribe(filter, f.Receive); err != nil {
			return fmt.Errorf("attach to the embedded broker: %w", err)
		}
	}
	f.LinkUp(inline{b}, true)
	return nil
}

// inline publishes through the embedded broker's in-process client.
type inline struct{ b *broker.Broker }

func (p inline) Publish(_ context.Context, topic string, payload []byte, qos byte, retain bool) error {
	return p.b.Publish(topic, payload, retain, qos)
}
