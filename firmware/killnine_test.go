package main

import (
	"context"
	"encoding/json"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/thermofleet/thermo/firmware/agent"
	"github.com/thermofleet/thermo/firmware/localctl"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// setter makes local changes one after another, each with a setpoint no
// other change uses, and remembers the last acknowledged one and the one
// in flight when the process died.
type setter struct {
	mu       sync.Mutex
	next     int            // sequence number of the next change
	acked    int            // last acknowledged change, 0 for none
	ackedW   protocol.Clock // stamp of the acknowledged change; zero while rejoining (not stamped yet)
	inflight int
	statuses []protocol.Clock // clocks of acknowledged changes, in order
}

func setpointOf(n int) float64 { return protocol.RoundSetpoint(5 + float64(n%301)/10) }

// run sets until the socket fails (the process died) or max changes are
// done. Setpoints repeat after 301 changes; the stamps tell them apart.
func (s *setter) run(socket string, max int) {
	for i := 0; i < max; i++ {
		s.mu.Lock()
		s.next++
		n := s.next
		s.inflight = n
		s.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		resp, err := localctl.Do(ctx, socket, localctl.Request{Op: localctl.OpSet, Set: map[string]any{protocol.PropSetpoint: setpointOf(n)}})
		cancel()
		if err != nil {
			return
		}
		var st agent.Status
		if json.Unmarshal(resp.Status, &st) != nil {
			return
		}
		s.mu.Lock()
		s.acked, s.ackedW, s.inflight = n, st.Props[protocol.PropSetpoint].W, 0
		if st.Rejoining {
			s.ackedW = protocol.Clock{}
		}
		s.statuses = append(s.statuses, st.VC)
		s.mu.Unlock()
	}
}

// TestKillNine runs the binary against Mosquitto and kills it with SIGKILL
// again and again at random moments, some during start-up and most while
// local changes are being made, restarting it each time. Throughout, the
// device's clock never goes backwards and no clock is used for two
// different events; at the end every acknowledged change is in the state
// and reaches the broker.
func TestKillNine(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, seed>>1))

	pki := testenv.NewPKI(t)
	m := testenv.StartMosquitto(t, pki, &testenv.MosquittoOptions{Persistence: true})
	ctl := pki.Connect(t, m.URL(), protocol.ControllerID)
	ctl.Subscribe(t, "thermo/k1/event", 1)
	d := newDevice(t, pki, m.URL(), "k1")

	var s setter
	var maxSeen protocol.Clock // element-wise max of every clock observed
	observe := func(what string, c protocol.Clock) {
		t.Helper()
		if c[protocol.DeviceIdx] < maxSeen[protocol.DeviceIdx] {
			t.Fatalf("%s: clock %v went backwards (seen %v before); seed %d", what, c, maxSeen, seed)
		}
		maxSeen = maxSeen.Merge(c)
	}

	const cycles = 12
	for i := 0; i < cycles; i++ {
		p := start(t, d.args()...)
		var wg sync.WaitGroup
		if i == 0 {
			// A first boot: let its rejoin end (nobody answers; the sync
			// timeout does), so later cycles are kills of a synced device.
			waitStatus(t, p, d.socket, "rejoin over", func(s agent.Status) bool { return s.Connected && !s.Rejoining })
		}
		if i%4 != 3 {
			// Wait for the agent, then make changes while the kill comes.
			waitStatus(t, p, d.socket, "agent up", func(agent.Status) bool { return true })
			st, err := status(d.socket)
			if err == nil {
				observe("status after restart", st.VC)
			}
			wg.Add(1)
			go func() { defer wg.Done(); s.run(d.socket, 1<<30) }() // until the kill
		}
		// Every fourth cycle the kill lands during start-up.
		kill := time.NewTimer(time.Duration(rng.IntN(150)) * time.Millisecond)
		select {
		case <-kill.C:
		case <-p.done:
			t.Fatalf("cycle %d: thermostat exited on its own: %v\n%s", i, p.err, p.log())
		}
		p.kill9()
		wg.Wait()
		s.mu.Lock()
		for _, c := range s.statuses {
			observe("acknowledged change", c)
		}
		s.statuses = nil
		s.mu.Unlock()
	}

	// The survivor: it must hold the last acknowledged change, or the one
	// in flight at the last kill (stored but not yet acknowledged).
	p := start(t, d.args()...)
	st := waitStatus(t, p, d.socket, "connected", func(s agent.Status) bool { return s.Connected && !s.Rejoining })
	observe("final status", st.VC)
	s.mu.Lock()
	acked, ackedW, inflight := s.acked, s.ackedW, s.inflight
	s.mu.Unlock()
	if acked == 0 {
		t.Fatalf("no change was acknowledged in %d cycles; seed %d", cycles, seed)
	}
	got := st.Props[protocol.PropSetpoint]
	switch {
	case got.Val == setpointOf(acked) && (got.W == ackedW || ackedW.IsZero()):
	case inflight > acked && got.Val == setpointOf(inflight) && ackedW.LessEq(got.W) && got.W != ackedW:
	default:
		t.Fatalf("final setpoint %v stamped %v; last acknowledged change %d (%v stamped %v), in flight %d (%v); seed %d",
			got.Val, got.W, acked, setpointOf(acked), ackedW, inflight, setpointOf(inflight), seed)
	}
	t.Logf("%d changes made, last acknowledged %d, final clock %v", s.next, acked, st.VC)

	// And it reaches the broker.
	ctl.WaitMatch(t, "the final state on the broker", isEvent("k1", func(ev protocol.Message) bool {
		return ev.Props[protocol.PropSetpoint] == got
	}))
	if err := p.term(); err != nil {
		t.Fatalf("exit after SIGTERM: %v", err)
	}

	// Every event the broker saw, in order: device counters strictly
	// increasing, so a restarted device never reused a clock.
	var last protocol.Clock
	n := 0
	for _, msg := range ctl.Messages() {
		if msg.Retained {
			continue
		}
		ev, _, err := protocol.DecodeMessage(msg.Payload)
		if err != nil {
			t.Fatalf("invalid event %s: %v", msg.Payload, err)
		}
		if n > 0 && ev.VC[protocol.DeviceIdx] <= last[protocol.DeviceIdx] {
			t.Fatalf("event clock %v after %v: a clock was reused or went backwards; seed %d", ev.VC, last, seed)
		}
		last = ev.VC
		n++
	}
	if n < cycles/2 {
		t.Errorf("only %d events reached the broker in %d cycles", n, cycles)
	}
}
