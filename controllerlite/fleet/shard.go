package fleet

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"sync/atomic"
	"time"

	"github.com/thermofleet/thermo/controllerlite/lease"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/workq"
	"github.com/thermofleet/thermo/protocol"
)

// Shares: several controller instances on one database (package lease).
// A shared fleet acts only for the devices its instance owns: it
// subscribes to their event, telemetry and cmd topics (and to every
// device's status, retained and small, so that a new device is found by
// its owner), processes their messages and publishes their greetings. The
// other devices' records are read from the database (Refresh) so that every
// instance serves the whole API and dashboard.
//
// The rules that keep instances from undoing each other:
//   - A controller event (a receive, a write, a greeting) increments the
//     device's controller counter. The owner counts in memory between
//     commits, and another instance's write counts from the stored
//     record, so both may count on from the same value: the same clock
//     then names two states. Nothing counted is published before it is
//     stored, and the owner stores with PutBased, which refuses a write
//     whose counter was not read from the stored record. On refusal the
//     owner starts again from the stored record, receives again the latest
//     Event it had taken (rebase), and stores that; the Commands of the
//     refused batch stay owed and go out after, with a fresh count.
//   - A remote write (Set) on any instance, owner or not, runs in one
//     transaction holding the device's row (SharedStore.Update): read the
//     stored record, rebase on it (owner) or take it (other), stamp the write,
//     store it, then publish the Command. The owner hears the Command on
//     the device's cmd topic and merges it.
//   - On taking a device the owner starts from its stored record; the
//     retained event and cmd its subscriptions deliver are then applied,
//     harmlessly if already known. On losing one it unsubscribes and
//     keeps the record only as a copy for readers.

// SharedStore is a store shared by several instances (*pgstore.Store).
type SharedStore interface {
	Store
	// Get reads one record.
	Get(id string) (store.Device, bool, error)
	// PutBased stores records if each stored controller counter is the
	// one in base (absent: no record), else fails.
	PutBased(base map[string]uint64, devs ...store.Device) error
	// Update runs fn on the stored record in a transaction holding its
	// row and stores what it returns.
	Update(id string, fn func(stored store.Device, ok bool) (store.Device, error)) error
}

// ChangeReader reads only the records written since a cursor
// (*pgstore.Store): a shared fleet's refresh reads those, and every record
// only each fullEvery-th time (to see records deleted elsewhere) and when
// the view changes.
type ChangeReader interface {
	LoadChanged(since time.Time) ([]store.Device, time.Time, error)
}

// fullEvery: one refresh in this many reads every record.
const fullEvery = 10

// Subscriber adds and removes the link's subscriptions
// (*transport.Client): they are renewed on every connection.
type Subscriber interface {
	Subscribe(filter string, qos byte) error
	Unsubscribe(filter string) error
}

// shard is a shared fleet's state, owned by the Run goroutine.
type shard struct {
	st   SharedStore
	sub  Subscriber
	subq *workq.Queue[func(context.Context)] // subscription changes, in order, off the Run goroutine
	view lease.View
	// now is the latest view, set as soon as the lease keeper tells it:
	// the gate on messages reads it, so an instance that must stop
	// acting does so even while its loop waits on the database.
	now atomic.Pointer[lease.View]
	// taken are the devices subscribed to and acted for; owned counts
	// them for readers off the Run goroutine (Status).
	taken map[string]bool
	owned atomic.Int64
	// base is each device's controller counter as last read or stored.
	base map[string]uint64
	// cursor is where the next read of changed records starts (zero:
	// read everything); refreshes counts the refreshes.
	cursor    time.Time
	refreshes int
	// since is, for each device taken, the latest Event received after
	// its record was last stored: what rebase receives again when another
	// instance's write is found in its place.
	since map[string]protocol.Message
}

// Share makes f one of several instances: st must be its store, and sub
// the link that Filters' subscriptions are made on. Until the first
// SetView the fleet owns nothing. Call it before Run.
func (f *Fleet) Share(sub Subscriber) error {
	st, ok := f.st.(SharedStore)
	if !ok {
		return fmt.Errorf("fleet: the store %s cannot be shared by several instances", f.st.Path())
	}
	f.sh = &shard{st: st, sub: sub, subq: workq.New[func(context.Context)](), taken: map[string]bool{}, base: map[string]uint64{},
		since: map[string]protocol.Message{}}
	for id, rec := range f.recs {
		f.sh.base[id] = rec.Replica.VC[0]
	}
	go f.runSubscriptions()
	return nil
}

// SetView tells f which instances are live and whether its own may act;
// f takes and drops devices to match.
func (f *Fleet) SetView(v lease.View) {
	f.sh.now.Store(&v)
	f.q.Push(func(ctx context.Context) { f.applyView(ctx, v, true) })
}

// Refresh reads the records other instances wrote since the last read:
// the copies of the devices they own, and devices they found.
func (f *Fleet) Refresh() {
	f.q.Push(func(ctx context.Context) { f.refresh(ctx) })
}

func (f *Fleet) refresh(ctx context.Context) {
	sh := f.sh
	sh.refreshes++
	cr, ok := f.st.(ChangeReader)
	if !ok || sh.cursor.IsZero() || sh.refreshes%fullEvery == 0 {
		f.applyView(ctx, sh.view, false)
		return
	}
	devs, next, err := cr.LoadChanged(sh.cursor)
	if err != nil {
		f.log.Error("read the records changed by other instances", "error", err)
		return
	}
	sh.cursor = next
	gained := 0
	for _, row := range devs {
		if f.applyRow(row.ID, row, true, sh.view, false) {
			gained++
		}
	}
	f.viewApplied(sh.view, false, gained)
}

// View is the latest view SetView told (the zero View if none).
func (f *Fleet) View() lease.View {
	if f.sh == nil {
		return lease.View{}
	}
	if v := f.sh.now.Load(); v != nil {
		return *v
	}
	return lease.View{}
}

// InstanceStatus is a shared fleet's part in Status: which instance it
// is, whether it may act (its lease is renewed), the live instances it
// shares the devices with, and how many it acts for.
type InstanceStatus struct {
	Name   string   `json:"name"`
	Active bool     `json:"active"`
	Live   []string `json:"live"`
	Owned  int      `json:"owned"`
}

func (f *Fleet) instanceStatus() *InstanceStatus {
	if f.sh == nil {
		return nil
	}
	v := f.View()
	return &InstanceStatus{Name: v.Self, Active: v.Active, Live: slices.Clone(v.Live), Owned: int(f.sh.owned.Load())}
}

// Owned returns the devices f acts for now, sorted (nil if not shared).
func (f *Fleet) Owned() []string {
	reply := make(chan []string, 1)
	f.q.Push(func(context.Context) {
		if f.sh == nil {
			reply <- nil
			return
		}
		reply <- slices.Sorted(maps.Keys(f.sh.taken))
	})
	select {
	case ids := <-reply:
		return ids
	case <-f.stopped:
		return nil
	}
}

func (f *Fleet) runSubscriptions() {
	for {
		select {
		case <-f.sh.subq.Wake():
			for _, fn := range f.sh.subq.Drain() {
				fn(context.Background())
			}
		case <-f.stopped:
			return
		}
	}
}

// deviceFilters are the topics subscribed to for an owned device (its
// status comes with every device's).
func (f *Fleet) deviceFilters(id string) []string {
	return []string{protocol.Topic(f.root, id, protocol.KindEvent), protocol.Topic(f.root, id, protocol.KindTelemetry),
		protocol.Topic(f.root, id, protocol.KindCmd)}
}

// sharedFilters are a shared fleet's standing subscriptions.
func (f *Fleet) sharedFilters() []string {
	return []string{protocol.Filter(f.root, protocol.KindStatus)}
}

// mayPublish reports whether f may publish: always, unless it is a shared
// fleet whose instance has not renewed its lease in time (or not yet).
func (f *Fleet) mayPublish() bool {
	if f.sh == nil {
		return true
	}
	v := f.sh.now.Load()
	return v != nil && v.Active
}

// acts reports whether f acts for device id (always, unless shared).
func (f *Fleet) acts(id string) bool { return f.sh == nil || f.sh.taken[id] }

// accept is handle's gate for a shared fleet: a message of a device f
// does not own is dropped; one of a device it owns and has not taken yet
// (a new device, found by its status) takes it first.
func (f *Fleet) accept(id string) bool {
	if f.sh == nil {
		return true
	}
	if v := f.sh.now.Load(); v == nil || !v.Owns(id) || !f.sh.view.Owns(id) {
		return false
	}
	if !f.sh.taken[id] {
		if err := f.take(id); err != nil {
			f.log.Error("take device: its messages are dropped until it is", "device", id, "error", err)
			return false
		}
	}
	return true
}

// applyView takes and drops devices to match v, after reading every
// record: the copies of devices f does not own are replaced by them.
func (f *Fleet) applyView(ctx context.Context, v lease.View, changed bool) {
	sh := f.sh
	sh.view = v
	var devs []store.Device
	var err error
	if cr, ok := f.st.(ChangeReader); ok {
		var next time.Time
		if devs, next, err = cr.LoadChanged(time.Time{}); err == nil {
			sh.cursor = next
		}
	} else {
		devs, err = f.st.Load()
	}
	if err != nil {
		f.log.Error("read the records of the devices", "error", err)
		devs = nil
	}
	rows := make(map[string]store.Device, len(devs))
	for _, d := range devs {
		rows[d.ID] = d
	}
	ids := map[string]bool{}
	for id := range f.recs {
		ids[id] = true
	}
	for id := range rows {
		ids[id] = true
	}
	gained := 0
	for _, id := range slices.Sorted(maps.Keys(ids)) {
		row, ok := rows[id]
		if err != nil && v.Owns(id) && !sh.taken[id] {
			continue // the store is out of reach: take it when it is back
		}
		if f.applyRow(id, row, ok, v, err == nil) {
			gained++
		}
	}
	f.viewApplied(v, changed, gained)
}

// applyRow takes, drops or updates device id to match view v and its
// stored record (ok: there is one; complete: the read saw every record, so
// a record missing was deleted), and reports whether f took the device.
func (f *Fleet) applyRow(id string, row store.Device, ok bool, v lease.View, complete bool) bool {
	sh := f.sh
	_, wasStored := sh.base[id]
	switch owns := v.Owns(id); {
	case owns && !sh.taken[id]:
		f.adopt(id, row, ok)
		f.takeSubscribe(id)
		return true
	case owns && !ok && complete && wasStored:
		// Stored before, gone now: deleted through another
		// instance (controllerlite delete). A message of it
		// makes it a new device, as with one instance.
		f.drop(id, false)
		f.forget(id)
		f.log.Info("device deleted through another instance", "device", id)
	case !owns && sh.taken[id]:
		f.drop(id, v.Active)
		if complete || ok {
			f.adopt(id, row, ok)
		}
	case !owns && (complete || ok):
		f.adopt(id, row, ok)
	}
	return false
}

// viewApplied ends a read of the records: the statuses are subscribed
// again when devices were taken or the view changed.
func (f *Fleet) viewApplied(v lease.View, changed bool, gained int) {
	sh := f.sh
	if gained > 0 || (changed && v.Active) {
		// A repeated subscription has the broker send the retained
		// statuses again: those of the devices just taken count now,
		// and so do those of devices no instance has a record of yet
		// that came while this one's share was another's or nobody's.
		filters := f.sharedFilters()
		sh.subq.Push(func(context.Context) {
			for _, filter := range filters {
				if err := sh.sub.Subscribe(filter, 1); err != nil {
					f.log.Warn("subscribe again", "filter", filter, "error", err)
				}
			}
		})
	}
	if changed || gained > 0 {
		f.log.Info("devices shared", "active", v.Active, "live", v.Live, "owned", len(sh.taken), "gained", gained)
	}
}

// adopt replaces f's copy of device id with its stored record (none: it
// is forgotten, unless f acts for it and holds changes not stored yet).
func (f *Fleet) adopt(id string, row store.Device, ok bool) {
	if !ok {
		if _, have := f.recs[id]; have && !f.acts(id) {
			f.forget(id)
		}
		return
	}
	f.sh.base[id] = row.Replica.VC[0]
	delete(f.sh.since, id)
	if old, have := f.recs[id]; have && reflect.DeepEqual(*old, row) {
		return
	}
	f.recs[id] = &row
	f.ctrl.Adopt(id, row.Replica)
	f.touch(id)
}

// deletedShared ends what a shared fleet holds of a device deleted
// through it: it is not taken, and has no record to count from.
func (f *Fleet) deletedShared(id string) {
	if f.sh == nil {
		return
	}
	if f.sh.taken[id] {
		f.drop(id, false)
	}
	delete(f.sh.base, id)
	delete(f.sh.since, id)
}

// forget drops a device deleted (here or elsewhere) from f's copies and
// its view; watchers hear of it.
func (f *Fleet) forget(id string) {
	f.ctrl.Forget(id)
	delete(f.recs, id)
	delete(f.dirty, id)
	delete(f.batch.persist, id)
	delete(f.batch.touched, id)
	delete(f.resyncs, id)
	f.unqueue(id)
	if f.sh != nil {
		delete(f.sh.base, id)
		delete(f.sh.since, id)
	}
	f.mu.Lock()
	if old, ok := f.view[id]; ok && old.Pending {
		f.owed--
	}
	delete(f.view, id)
	f.notify(id)
	f.mu.Unlock()
}

// take reads device id's stored record and subscribes to its topics.
func (f *Fleet) take(id string) error {
	row, ok, err := f.sh.st.Get(id)
	if err != nil {
		return err
	}
	f.adopt(id, row, ok)
	f.takeSubscribe(id)
	return nil
}

func (f *Fleet) takeSubscribe(id string) {
	f.sh.taken[id] = true
	f.sh.owned.Store(int64(len(f.sh.taken)))
	f.log.Debug("device taken", "device", id)
	filters := f.deviceFilters(id)
	f.sh.subq.Push(func(context.Context) {
		for _, filter := range filters {
			if err := f.sh.sub.Subscribe(filter, 1); err != nil {
				f.log.Warn("subscribe: renewed on the next connection", "filter", filter, "error", err)
			}
		}
	})
}

// drop stops acting for device id: what f has not stored of it is stored
// first while f is still active (a handover to an instance that joined),
// and left (the new owner starts from the record) when it is not.
func (f *Fleet) drop(id string, active bool) {
	if active && f.dirty[id] {
		rec := *f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		if err := f.sh.st.PutBased(f.baseOf(id), rec); err == nil {
			f.sh.base[id] = rec.Replica.VC[0]
		}
	}
	delete(f.sh.taken, id)
	f.sh.owned.Store(int64(len(f.sh.taken)))
	delete(f.sh.since, id)
	delete(f.dirty, id)
	delete(f.batch.persist, id)
	delete(f.resyncs, id)
	f.unqueue(id)
	f.log.Debug("device dropped", "device", id)
	filters := f.deviceFilters(id)
	f.sh.subq.Push(func(context.Context) {
		for _, filter := range filters {
			if err := f.sh.sub.Unsubscribe(filter); err != nil {
				f.log.Warn("unsubscribe", "filter", filter, "error", err)
			}
		}
	})
}

// baseOf is the base PutBased checks for ids.
func (f *Fleet) baseOf(ids ...string) map[string]uint64 {
	out := make(map[string]uint64, len(ids))
	for _, id := range ids {
		if c, ok := f.sh.base[id]; ok {
			out[id] = c
		}
	}
	return out
}

// putShared stores recs for a shared fleet; on a refusal it merges the
// stored records, to be stored by the next commit.
func (f *Fleet) putShared(recs []store.Device) error {
	ids := make([]string, len(recs))
	for i, r := range recs {
		ids[i] = r.ID
	}
	err := f.sh.st.PutBased(f.baseOf(ids...), recs...)
	if err == nil {
		for _, r := range recs {
			f.sh.base[r.ID] = r.Replica.VC[0]
			delete(f.sh.since, r.ID)
		}
		return nil
	}
	merged := 0
	for _, id := range ids {
		row, ok, gerr := f.sh.st.Get(id)
		if gerr != nil || !ok {
			continue
		}
		if c, known := f.sh.base[id]; known && c == row.Replica.VC[0] {
			continue
		}
		f.rebase(id, row)
		f.batch.persist[id] = true
		merged++
	}
	if merged == 0 {
		return err
	}
	// Store the merged records and send what is owed from them now,
	// not at the next flush.
	f.q.Push(func(context.Context) { f.sendOwed() })
	return fmt.Errorf("%w: %w", errMerged, err)
}

// errMerged: PutBased refused a write because another instance had
// written, and its records were merged to be stored again.
var errMerged = errors.New("merged another instance's write")

// received notes an Event f took for a device it owns, until the record
// is stored: the latest is enough, as every Event carries the device's
// whole state.
func (f *Fleet) received(id string, m protocol.Message) {
	if f.sh == nil {
		return
	}
	if prev, ok := f.sh.since[id]; !ok || m.VC[1] >= prev.VC[1] {
		f.sh.since[id] = m
	}
}

// rebase takes another instance's stored record of a device f owns, found
// where f expected its own last one: f starts again from it and receives
// again the latest Event it took since (protocol.Controller.Rebase says
// why a merge by the clock rules would lose the other's write). f's own
// fields (status, telemetry) stand; a Command the other could not
// publish is owed.
func (f *Fleet) rebase(id string, row store.Device) {
	var since *protocol.Message
	if m, ok := f.sh.since[id]; ok {
		since = &m
	}
	if _, err := f.ctrl.Rebase(id, row.Replica, since); err != nil {
		f.log.Error("rebase on the stored record: the latest event is not received again", "device", id, "error", err)
	}
	f.sh.base[id] = row.Replica.VC[0]
	rec := f.record(id)
	rec.Replica = f.ctrl.Replica(id)
	rec.Owed = rec.Owed || row.Owed
	f.touch(id)
	f.log.Info("took another instance's write", "device", id, "stored_vc", row.Replica.VC, "vc", rec.Replica.VC)
}

// errNoChange rolls back an Update that has nothing to write.
var errNoChange = errors.New("no change")

// clearOwedShared clears the owed mark of device id, which another
// instance owns, in the store if its record is still the one whose Command
// (clock vc) the broker took: f writes no other field of a record it does
// not own.
func (f *Fleet) clearOwedShared(id string, vc protocol.Clock) {
	if err := f.sh.st.Update(id, func(stored store.Device, ok bool) (store.Device, error) {
		if !ok || stored.Replica.VC != vc {
			return store.Device{}, errNoChange // newer writes carry their own mark
		}
		stored.Owed = false
		return stored, nil
	}); err != nil && !errors.Is(err, errNoChange) {
		f.log.Warn("store: clear the owed mark", "device", id, "error", err)
	}
}

// setShared is Set for a shared fleet (see the rules above).
func (f *Fleet) setShared(ctx context.Context, id string, changes map[string]any) (Device, error) {
	owns := f.acts(id)
	if owns {
		// What the batch holds is stored first: the row is then the
		// owner's latest, bar other instances' writes. A commit that
		// found another's write in its place has rebased on it and
		// stores again.
		err := f.commit(ctx)
		if errors.Is(err, errMerged) {
			err = f.commit(ctx)
		}
		if err != nil {
			return Device{}, err
		}
	}
	// What the write changes in memory is undone if the store refuses it:
	// the caller is told it failed, so it must not go out later.
	savedReplica := f.ctrl.Replica(id)
	savedBase, hadBase := f.sh.base[id]
	var savedRec *store.Device
	if rec, ok := f.recs[id]; ok {
		c := *rec
		savedRec = &c
	}
	var m protocol.Message
	var setErr error
	err := f.sh.st.Update(id, func(stored store.Device, ok bool) (store.Device, error) {
		if !ok {
			setErr = fmt.Errorf("%w %q", ErrUnknownDevice, id)
			return store.Device{}, setErr
		}
		if !owns {
			f.adopt(id, stored, true)
		} else if c := f.sh.base[id]; c != stored.Replica.VC[0] {
			f.rebase(id, stored)
		}
		if m, setErr = f.ctrl.Set(id, changes); setErr != nil {
			return store.Device{}, setErr
		}
		rec := f.recs[id]
		rec.Replica = f.ctrl.Replica(id)
		rec.Owed = true
		return *rec, nil
	})
	switch {
	case setErr != nil && (errors.Is(setErr, ErrUnknownDevice) || errors.Is(setErr, ErrNotReady)):
		return Device{}, setErr
	case setErr != nil && errors.Is(setErr, ErrClockExhausted):
		f.log.Error("remote write refused: the clock for this device is at its limit", "device", id, "error", setErr)
		return Device{}, fmt.Errorf("set %s: %w", id, setErr)
	case setErr != nil:
		return Device{}, fmt.Errorf("%w: %w", ErrInvalid, setErr)
	case err != nil:
		// Not stored, so not published, and undone here: the write is
		// dropped (the caller may send it again).
		if savedReplica != nil {
			if _, rerr := f.ctrl.Rebase(id, savedReplica, nil); rerr != nil {
				f.log.Error("undo a write the store refused", "device", id, "error", rerr)
			}
		}
		if savedRec != nil {
			*f.recs[id] = *savedRec
		}
		if hadBase {
			f.sh.base[id] = savedBase
		}
		return Device{}, fmt.Errorf("persist before publish: %w: %w", ErrStore, err)
	}
	f.sh.base[id] = m.VC[0]
	f.log.Info("remote write", "device", id, "changes", changes, "vc", m.VC, "owner", owns)
	f.touch(id)
	// Stored: to the outbox, after whatever of this device's is there;
	// the owed mark goes when the broker has taken it (published).
	f.queue(ctx, []command{{id, m}})
	f.showTouched()
	d, _ := f.Device(id)
	return d, nil
}
