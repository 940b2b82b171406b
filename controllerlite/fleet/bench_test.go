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
// The baseline hands the fleet one message at a time, each once the one
// before it was handled, so every message is a batch of its own and is
// committed (stored, then published) alone. The link takes every publish
// at once: this measures the fleet, not a broker.
func BenchmarkReturnBurst(b *testing.B) {
	b.Run("commit-each-message", func(b *testing.B) { benchmarkReturnBurst(b, true) })
	b.Run("batched", func(b *testing.B) { benchmarkReturnBurst(b, false) })
}

func benchmarkReturnBurst(b *testing.B, oneAtATime bool) {
	const devices = 100
	st, err := store.Open(b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	f, stop := startFleet(b, st, &failingPub{}, nil)
	defer stop()
	online := protocol.Status{Online: true}.Encode()
	b.ResetTimer()
	for n := range b.N {
		want := f.Status().Published + devices
		payload := eventPayload(b, uint64(n+1), 18+float64(n%40)/10)
		receive := func(topic string, payload []byte) {
			n := f.Status().Received
			f.Receive(topic, payload, false)
			for oneAtATime && f.Status().Received == n {
				runtime.Gosched() // handled, and committed before the loop takes more
			}
		}
		for i := range devices {
			id := fmt.Sprintf("d%03d", i)
			receive(topic(id, protocol.KindEvent), payload)
			receive(topic(id, protocol.KindStatus), online)
		}
		for f.Status().Published < want {
			runtime.Gosched() // the fleet's loop runs on its own goroutine
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*devices), "µs/device")
}
