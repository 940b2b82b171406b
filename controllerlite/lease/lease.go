// Package lease shares a fleet's devices among several controller
// instances that share one PostgreSQL database, without anything from the
// broker beyond MQTT 3.1.1.
//
// Each instance holds a lease in the database's controllers table, renewed
// every Lease/3 with the database's clock; the live instances are those
// whose lease has not expired. A device belongs to the live instance that
// wins rendezvous (highest random weight) hashing of the device id over
// the instances' names (Owner), so an instance that joins or leaves moves
// only the devices it gains or had.
//
// The rule that keeps two owners from acting at once: an instance that has
// not renewed for StopAfter (Lease*2/3) since it sent its last successful
// renewal stops acting (its View turns inactive: it owns nothing), which is
// at least Lease/3 before its lease ends at the others, who take its
// devices only when it has ended. An instance that joins while others are
// live waits JoinDelay (Lease*2/3, as long as StopAfter) after its first
// renewal before it owns anything: an owner it takes devices from has by
// then either renewed since the newcomer registered, seen it and dropped
// them, or gone StopAfter without a renewal and stopped acting.
package lease

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"slices"
	"time"
)

// DefaultLease is the lease of `serve --lease`.
const DefaultLease = 10 * time.Second

// MinLease is the shortest lease taken: shorter ones would have the
// instances spend their time renewing.
const MinLease = 300 * time.Millisecond

// Registry is where the leases are kept: *pgstore.Store.
type Registry interface {
	// Renew extends name's lease to lease from now by the registry's
	// clock and returns the live names, its own among them.
	Renew(ctx context.Context, name string, lease time.Duration) ([]string, error)
	// Release ends name's lease at once.
	Release(ctx context.Context, name string) error
}

// Owner returns which of live owns device id: the name with the highest
// weight hash(name, id). "" when live is empty.
func Owner(id string, live []string) string {
	var best string
	var bestW uint64
	for _, n := range live {
		h := fnv.New64a()
		h.Write([]byte(n))
		h.Write([]byte{0})
		h.Write([]byte(id))
		w := mix(h.Sum64())
		if best == "" || w > bestW || (w == bestW && n < best) {
			best, bestW = n, w
		}
	}
	return best
}

// mix spreads FNV's output (splitmix64's finaliser), so that names and ids
// that differ in one character still get independent weights.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}

// View is what one instance knows of the shares: whether it may act, and
// the live instances.
type View struct {
	Self   string
	Active bool
	Live   []string
}

// Owns reports whether the instance owns device id: it is active and wins
// the hash.
func (v View) Owns(id string) bool { return v.Active && Owner(id, v.Live) == v.Self }

func (v View) equal(o View) bool {
	return v.Self == o.Self && v.Active == o.Active && slices.Equal(v.Live, o.Live)
}

// Options configure a Keeper.
type Options struct {
	// Name is the instance's name, unique among the instances.
	Name string
	// Lease is how long a renewal keeps the instance live (DefaultLease).
	Lease    time.Duration
	Registry Registry
	// OnChange hears every new View, from the Keeper's goroutine, in
	// order. The first is the first renewal's.
	OnChange func(View)
	Logger   *slog.Logger
}

// Keeper renews an instance's lease and tells its View.
type Keeper struct {
	o    Options
	view View
}

// New checks o and returns a Keeper; Run runs it.
func New(o Options) (*Keeper, error) {
	if o.Name == "" {
		return nil, errors.New("lease: no instance name")
	}
	if o.Registry == nil || o.OnChange == nil {
		return nil, errors.New("lease: Registry and OnChange are required")
	}
	if o.Lease == 0 {
		o.Lease = DefaultLease
	}
	if o.Lease < MinLease {
		return nil, fmt.Errorf("lease %v: at least %v", o.Lease, MinLease)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return &Keeper{o: o, view: View{Self: o.Name}}, nil
}

// Interval is how often the lease is renewed.
func (k *Keeper) Interval() time.Duration { return k.o.Lease / 3 }

// StopAfter is how long after the last successful renewal was sent the
// instance stops acting when it cannot renew.
func (k *Keeper) StopAfter() time.Duration { return k.o.Lease * 2 / 3 }

// JoinDelay is how long an instance that finds others live waits before
// owning devices.
func (k *Keeper) JoinDelay() time.Duration { return k.StopAfter() }

type renewal struct {
	sent time.Time
	live []string
	err  error
}

// Run renews the lease until ctx is done, then releases it (best effort:
// a lease not released ends by itself).
func (k *Keeper) Run(ctx context.Context) {
	results := make(chan renewal, 1)
	busy := false
	renew := func() {
		busy = true
		go func() {
			sent := time.Now()
			rctx, cancel := context.WithTimeout(ctx, k.Interval())
			live, err := k.o.Registry.Renew(rctx, k.o.Name, k.o.Lease)
			cancel()
			results <- renewal{sent, live, err}
		}()
	}
	tick := time.NewTicker(k.Interval())
	defer tick.Stop()
	stop := time.NewTimer(time.Hour)
	stop.Stop()
	join := time.NewTimer(time.Hour)
	join.Stop()
	var joined, joining bool
	var live []string
	renew()
	for {
		select {
		case <-ctx.Done():
			if busy {
				<-results
			}
			rctx, cancel := context.WithTimeout(context.Background(), k.Interval())
			if err := k.o.Registry.Release(rctx, k.o.Name); err != nil {
				k.o.Logger.Warn("release the lease: the others take this instance's devices when it ends", "error", err)
			}
			cancel()
			return
		case <-tick.C:
			if !busy {
				renew()
			}
		case r := <-results:
			busy = false
			if r.err != nil {
				k.o.Logger.Warn("lease not renewed", "error", r.err, "active", k.view.Active)
				continue
			}
			live = r.live
			// The lease runs from when the renewal was sent at the
			// latest, so stopping StopAfter from then is before it ends.
			stop.Reset(k.StopAfter() - time.Since(r.sent))
			if !joined {
				joined = true
				if len(live) > 1 {
					joining = true
					join.Reset(k.JoinDelay())
					k.o.Logger.Info("joining the live instances: owning devices after the join delay", "live", live, "delay", k.JoinDelay())
				}
			}
			k.set(View{Self: k.o.Name, Active: !joining, Live: live})
		case <-join.C:
			if joining {
				joining = false
				k.set(View{Self: k.o.Name, Active: true, Live: live})
			}
		case <-stop.C:
			k.o.Logger.Error("lease not renewed in time: this instance stops acting for its devices until it renews", "stop_after", k.StopAfter())
			// Back with a renewal, it joins anew: its lease may have
			// ended meanwhile and others taken its devices.
			joined, joining = false, false
			join.Stop()
			k.set(View{Self: k.o.Name, Active: false, Live: live})
		}
	}
}

func (k *Keeper) set(v View) {
	if v.equal(k.view) {
		return
	}
	k.o.Logger.Info("instances", "self", v.Self, "active", v.Active, "live", v.Live)
	k.view = v
	k.o.OnChange(v)
}
