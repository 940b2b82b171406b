package fleet

import (
	"context"
	"errors"
	"fmt"

	"github.com/thermofleet/thermo/protocol"
)

// ErrLinkDown is returned by Delete while the controller has no link to
// its broker: the device's retained messages could not be removed.
var ErrLinkDown = errors.New("the controller is not connected to its broker")

// Delete retires device id (controllerlite delete): it removes the
// device's retained messages from the broker (an empty retained publish
// on each of its topics, its own retained command first, so neither a
// restarted controller nor a rejoining board finds them) and then its
// record, its clock and its view. Watchers hear of id; Device(id) no longer
// finds it. A device still connected and not revoked comes back as a new
// device with its next message: revoke it first (the server does, with a
// signing key).
func (f *Fleet) Delete(ctx context.Context, id string) error {
	if !protocol.ValidID(id) {
		return fmt.Errorf("%w %q", ErrUnknownDevice, id)
	}
	select {
	case <-f.ready:
	case <-f.stopped:
		return ErrStopped
	case <-ctx.Done():
		return fmt.Errorf("%w: still reading the broker's retained messages (%v)", ErrNotReady, ctx.Err())
	}
	reply := make(chan error, 1)
	f.q.Push(func(ctx context.Context) { f.delete(ctx, id, func(err error) { reply <- err }) })
	select {
	case err := <-reply:
		return err
	case <-f.stopped:
		return ErrStopped
	case <-ctx.Done():
		return fmt.Errorf("delete %s: %w", id, ctx.Err())
	}
}

// delete runs on the Run goroutine and tells done its outcome, there too.
// What the batch holds for id is stored first, and a Command of id's
// already on its way is let finish (a waiting one is dropped), so nothing
// of it is published after the clearing.
func (f *Fleet) delete(ctx context.Context, id string, done func(error)) {
	if _, ok := f.recs[id]; !ok {
		done(fmt.Errorf("%w %q", ErrUnknownDevice, id))
		return
	}
	if f.pub == nil {
		done(fmt.Errorf("delete %s: %w: its retained messages cannot be removed now, try again", id, ErrLinkDown))
		return
	}
	if err := f.commit(ctx); err != nil {
		done(fmt.Errorf("delete %s: %w", id, err))
		return
	}
	f.unqueue(id)
	f.whenIdle(id, func() { done(f.clear(ctx, id)) })
}

// clear removes device id's retained messages, then its record.
func (f *Fleet) clear(ctx context.Context, id string) error {
	if _, ok := f.recs[id]; !ok {
		return fmt.Errorf("%w %q", ErrUnknownDevice, id) // deleted meanwhile
	}
	if f.pub == nil {
		return fmt.Errorf("delete %s: %w: its retained messages cannot be removed now, try again", id, ErrLinkDown)
	}
	for _, k := range []protocol.Kind{protocol.KindCmd, protocol.KindEvent, protocol.KindStatus, protocol.KindTelemetry} {
		topic := protocol.Topic(f.root, id, k)
		pctx, cancel := context.WithTimeout(ctx, f.opts.PublishTimeout)
		err := f.pub.Publish(pctx, topic, nil, 1, true)
		cancel()
		if err != nil {
			return fmt.Errorf("delete %s: clear retained %s: %w", id, topic, err)
		}
	}
	if err := f.st.Delete(id); err != nil {
		return fmt.Errorf("delete %s: %w", id, err)
	}
	f.deletedShared(id)
	f.forget(id)
	f.log.Info("device deleted: record and retained messages removed", "device", id)
	return nil
}
