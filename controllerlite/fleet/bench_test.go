package fleet

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"testing"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/protocol"
)

// ackAll is a Publisher whose broker acknowledges at once: the benchmark
// measures the fleet, not a broker.
type ackAll struct{}

func (ackAll) Publish(context.Context, string, []byte, byte, bool) error { return nil }

// BenchmarkReturnBurst is the controller's share of a fleet's return after
// a broker outage: 100 devices each send the Event carrying their outage
// writes and their online status, and the fleet applies, stores and
// greets each (the greetings are what the devices wait for). Reported per
// device; the resync of the last device in a burst waits for all before it.
// The baseline commits (stores, then publishes) after every message.
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
	f, err := New(Options{Store: st, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		b.Fatal(err)
	}
	f.commitEach = commitEach
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	defer func() { cancel(); <-done }()
	f.LinkUp(ackAll{}, true)
	<-f.Ready()
	online := protocol.Status{Online: true}.Encode()
	b.ResetTimer()
	for n := range b.N {
		want := f.Status().Published + devices
		for i := range devices {
			id := fmt.Sprintf("d%03d", i)
			m := protocol.Message{VC: protocol.Clock{0, uint64(n + 1)},
				Props: protocol.Props{protocol.PropSetpoint: {Val: 18 + float64(n%40)/10, W: protocol.Clock{0, uint64(n + 1)}}}, Src: protocol.SrcLocal}
			payload, err := m.Encode()
			if err != nil {
				b.Fatal(err)
			}
			f.Receive(protocol.Topic(protocol.DefaultRoot, id, protocol.KindEvent), payload, false)
			f.Receive(protocol.Topic(protocol.DefaultRoot, id, protocol.KindStatus), online, false)
		}
		for f.Status().Published < want {
			runtime.Gosched() // the fleet's loop runs on its own goroutine
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N*devices), "µs/device")
}
