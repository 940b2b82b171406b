package broker

import (
	"fmt"
	"log/slog"
	"math"
	"strings"
	"testing"

	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestClientQueueOption: Options.ClientQueue is checked by New; zero is
// DefaultClientQueue.
func TestClientQueueOption(t *testing.T) {
	pki := testenv.NewPKI(t)
	// Not a constant: on 32-bit platforms (test-arm) int wraps instead of
	// failing to compile, and the value is refused as negative.
	var maxInt32 int64 = math.MaxInt32
	for _, tc := range []struct {
		queue   int
		wantErr string
	}{
		{0, ""},
		{1, ""},
		{math.MaxInt32, ""},
		{-1, "client queue -1: want 1 to 2147483647 packets"},
		{int(maxInt32 + 1), "want 1 to 2147483647 packets"},
	} {
		t.Run(fmt.Sprint(tc.queue), func(t *testing.T) {
			b, err := New(Options{CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey, ClientQueue: tc.queue, Logger: slog.New(newLogRecorder())})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Fatalf("New: %v", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("New: error %v, want one containing %q", err, tc.wantErr)
			case err != nil:
				return
			}
			want := tc.queue
			if want == 0 {
				want = DefaultClientQueue
			}
			if got := b.srv.Options.Capabilities.MaximumClientWritesPending; int(got) != want {
				t.Fatalf("mochi's MaximumClientWritesPending %d, want %d", got, want)
			}
		})
	}
}

// TestClientQueue: a controller connecting over the network subscribes to
// the whole fleet and is sent every retained message at once, three a
// device. With a queue of three per device it receives every one; with a
// queue of one packet the broker drops some, counts them and logs the
// client. (Each subscription sends the retained messages again: the
// second case subscribes until a drop is seen, so a writer that kept up
// once cannot make it pass or fail by chance.)
func TestClientQueue(t *testing.T) {
	const devices = 200
	kinds := []protocol.Kind{protocol.KindCmd, protocol.KindEvent, protocol.KindStatus}
	pki := testenv.NewPKI(t)
	for _, tc := range []struct {
		name  string
		queue int
		qos   byte
		drops bool
	}{
		{"three per device: every retained message arrives", 3 * devices, 1, false},
		// QoS 0: mochi refuses a SUBSCRIBE whose packet id its own
		// QoS 1 deliveries to the client still use (code 0x91).
		{"one packet: dropped, counted and logged", 1, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tb := startBrokerWith(t, pki, Options{ClientQueue: tc.queue}, nil)
			for i := range devices {
				for _, k := range kinds {
					if err := tb.Publish(fmt.Sprintf("thermo/d%03d/%s", i, k), []byte(k), true, 1); err != nil {
						t.Fatal(err)
					}
				}
			}
			ctrl := pki.Connect(t, tb.url, protocol.ControllerID)
			ctrl.Subscribe(t, "thermo/#", tc.qos)
			if !tc.drops {
				testenv.Eventually(t, testenv.WaitTimeout, "every retained message", func() (bool, string) {
					n := len(ctrl.Messages())
					return n == len(kinds)*devices, fmt.Sprintf("%d of %d", n, len(kinds)*devices)
				})
				if d := tb.Stats().MessagesDropped; d != 0 {
					t.Fatalf("%d packets dropped, want none", d)
				}
				if tb.log.has("packet dropped") {
					t.Fatal("a drop logged, none counted")
				}
				return
			}
			testenv.WaitFor(t, "a dropped packet", func() bool {
				if tb.Stats().MessagesDropped > 0 {
					return true
				}
				ctrl.Subscribe(t, "thermo/#", tc.qos)
				return false
			})
			tb.log.waitFor(t, "WARN broker: packet dropped", "client="+protocol.ControllerID, "queue=1")
		})
	}
}
