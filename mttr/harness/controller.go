package harness

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/thermofleet/thermo/controllerlite/api"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/server"
)

// controller is the real controllerlite the devices sync with, as the
// harness sees it: the devices it holds, and remote users' writes.
type controller interface {
	// devices returns what the controller holds, by device id, and when
	// the harness learned it.
	devices(ctx context.Context) (map[string]seen, error)
	// set is a remote user's write; it retries while the controller is
	// unreachable (its process killed with the embedded broker) until
	// ctx is done.
	set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error)
	// firstFlip reports when the controller's own broker connection
	// first went up (or down) at or after t; never for a controller with
	// no link of its own (the embedded broker is in its process).
	firstFlip(up bool, t time.Time) (time.Time, bool)
	close()
}

// localController is controllerlite (package server, what `controllerlite
// serve --broker` runs) in the harness's process, on an external broker.
type localController struct {
	s    *server.Server
	stop context.CancelFunc
	feed *feed

	mu    sync.Mutex
	up    bool
	flips []flip // every change of the link state
	done  chan struct{}
}

// flip is a change of the controller's link state.
type flip struct {
	up bool
	at time.Time
}

func startLocalController(brokerURL, ca, cert, key, dataDir string, keepAlive time.Duration, log *slog.Logger) (*localController, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := server.Start(ctx, server.Config{
		CAFile: ca, CertFile: cert, KeyFile: key, DataDir: dataDir,
		Broker: brokerURL, KeepAlive: keepAlive, HTTPAddr: "127.0.0.1:0", Logger: log.With("part", "controllerlite"),
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("controllerlite: %w", err)
	}
	c := &localController{s: s, stop: cancel, feed: newFeed(), done: make(chan struct{})}
	go c.watch()
	go c.feed.followFleet(ctx, s.Fleet())
	return c, nil
}

// watch follows the controller's link state, to time its own detection
// and reconnection.
func (c *localController) watch() {
	t := time.NewTicker(pollEvery)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case now := <-t.C:
			up := c.s.Fleet().Status().Connected
			c.mu.Lock()
			if up != c.up {
				c.up = up
				c.flips = append(c.flips, flip{up, now})
			}
			c.mu.Unlock()
		}
	}
}

// firstFlip returns when the link first went up (or down) at or after t.
func (c *localController) firstFlip(up bool, t time.Time) (time.Time, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, f := range c.flips {
		if f.up == up && !f.at.Before(t) {
			return f.at, true
		}
	}
	return time.Time{}, false
}

func (c *localController) devices(context.Context) (map[string]seen, error) {
	return c.feed.devices()
}

func (c *localController) set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error) {
	return c.s.Fleet().Set(ctx, id, changes)
}

func (c *localController) close() {
	close(c.done)
	c.stop()
	c.s.Wait()
}

// remoteController is controllerlite running with its embedded broker in
// the broker's process, reached through its HTTP API.
type remoteController struct {
	c     *api.Client
	slots chan struct{} // writes in flight (remoteWrites)
	feed  *feed
	stop  context.CancelFunc
}

func newRemoteController(httpAddr, token string) (*remoteController, error) {
	c, err := api.NewClient(httpAddr, token)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &remoteController{c: c, slots: make(chan struct{}, remoteWrites), feed: newFeed(), stop: cancel}
	go r.feed.followAPI(ctx, c)
	return r, nil
}

// remoteWrites bounds the controller writes in flight at once (the API
// client keeps as many connections). A write per device for a thousand
// devices, each retrying every 50 ms on its own connection while the
// controller was down, made the harness dial the dead port 20,000 times a
// second and open a thousand connections the moment it came back: load on
// the machine the return is measured on, and nothing a controller's users
// would do.
const remoteWrites = 64

func (r *remoteController) devices(context.Context) (map[string]seen, error) {
	return r.feed.devices()
}

func (r *remoteController) set(ctx context.Context, id string, changes map[string]any) (fleet.Device, error) {
	return retrySet(ctx, r.slots, id, func(ctx context.Context) (fleet.Device, error) {
		return r.c.Set(ctx, id, changes)
	})
}

// retrySet makes a remote write through try, at most cap(slots) in flight
// at once, and tries again every 50 ms while the controller cannot take it
// (unreachable or timed out; 503: not ready, or its store out of reach)
// until ctx is done.
func retrySet(ctx context.Context, slots chan struct{}, id string, try func(ctx context.Context) (fleet.Device, error)) (fleet.Device, error) {
	select {
	case slots <- struct{}{}:
		defer func() { <-slots }()
	case <-ctx.Done():
		return fleet.Device{}, fmt.Errorf("set %s: %w", id, ctx.Err())
	}
	for {
		d, err := try(ctx)
		var ae *api.Error
		again := errors.Is(err, api.ErrUnreachable) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil ||
			errors.As(err, &ae) && ae.Status == http.StatusServiceUnavailable
		if err == nil || !again {
			return d, err
		}
		t := time.NewTimer(50 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return fleet.Device{}, fmt.Errorf("set %s: the controller did not take it: %w", id, err)
		case <-t.C:
		}
	}
}

func (r *remoteController) firstFlip(bool, time.Time) (time.Time, bool) { return time.Time{}, false }

func (r *remoteController) close() { r.stop() }
