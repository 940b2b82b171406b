package fleet

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// BenchmarkReturnBurst is the controller's share of a fleet's return after
// a broker outage: 100 devices each send the Event carrying their outage
// writes and their online status, and the fleet applies, stores and
// greets each (the greetings are what the devices wait for). Reported per
// device; the resync of the last device in a burst waits for all before it.
// The baseline commits (stores, then publishes) after every message. The
// link takes every publish at once: this measures the fleet, not a broker.
func BenchmarkReturnBurst(b *testing.B) {
	b.Run("commit-each-message", func(b *testing.B) { benchmarkReturnBurst(b, true) })
	b.Run("batched", func(b *testing.B) { benchmarkReturnBurst(b, false) })
}

func benchmarkReturnBurst(b *testing.B, commitEach bool) {
	const devices = 100
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	f, stop := startFleet(b, st, &failingPub{}, func(f *Fleet) { f.commitEach = commitEach })
	defer stop()
	online := protocol.Status{Online: true}.Encode()
	b.ResetTimer()
	for n := range b.N {
		want := f.Status().Published + devices
		payload := eventPayload(b, uint64(n+1), 18+float64(n%40)/10)
		for i := range devices {
			id := fmt.Sprintf("d%03d", i)
			f.Receive(topic(id, protocol.KindEvent), payload, false)
			f.Receive(topic(id, protocol.KindStatus), online, false)
		}
		for f.Status().Published < want {
			runtime.Gosched() // the fleet's loop runs on its own goroutine
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*devices), "µs/device")
}
