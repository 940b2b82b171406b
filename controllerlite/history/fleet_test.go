package history

import (
	"context"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/broker"
	"github.com/thermofleet/thermo/controllerlite/fleet"
	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

// TestFromFleet: telemetry a device publishes through the embedded broker
// reaches the history through a real fleet, with the setpoint and mode
// the controller holds.
func TestFromFleet(t *testing.T) {
	pki := testenv.NewPKI(t)
	b, err := broker.New(broker.Options{
		Listen: "127.0.0.1:0", CAFile: pki.CAFile, CertFile: pki.ServerCert, KeyFile: pki.ServerKey,
		DataDir: t.TempDir(), Logger: quietLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	_, port, _ := net.SplitHostPort(b.Addr().String())
	url := "mqtts://localhost:" + port

	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	h, err := Open(t.TempDir(), Options{Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	f, err := fleet.New(fleet.Options{Store: st, Telemetry: h, Logger: quietLog})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done; h.Close(); st.Close() })
	if err := fleet.AttachBroker(f, b); err != nil {
		t.Fatal(err)
	}
	select {
	case <-f.Ready():
	case <-time.After(testenv.WaitTimeout):
		t.Fatal("fleet not ready")
	}

	dev := pki.Connect(t, url, "d1")
	dev.Publish(t, "thermo/d1/event", 1, true, []byte(`{"v":1,"vc":[0,1],"props":{"setpoint_c":{"val":21,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}}`))
	testenv.WaitFor(t, "the device's event in the fleet", func() bool {
		d, ok := f.Device("d1")
		return ok && d.VC[1] == 1
	})
	tel := func(temp float64, heat bool) []byte {
		return fmt.Appendf(nil, `{"v":1,"ts":"2026-12-03T00:00:00Z","temp_c":%v,"heat":%v,"cool":false,"sensor_ok":true}`, temp, heat)
	}
	dev.Publish(t, "thermo/d1/telemetry", 0, false, tel(20.25, false))
	dev.Publish(t, "thermo/d1/telemetry", 0, false, tel(20.75, true)) // heating until the next, or now

	var p Point
	testenv.WaitFor(t, "two samples in the history", func() bool {
		if err := h.Flush(); err != nil {
			t.Fatal(err)
		}
		res, err := h.Query("d1", time.Time{}, time.Now().Add(time.Minute), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var n int
		for _, x := range res.Points {
			n += x.Samples
			p = x
		}
		return n >= 2 && len(res.Points) == 1 && p.HeatingS > 0
	})
	if p.Samples != 2 || p.TempN != 2 || p.TempMin != 20.25 || p.TempMax != 20.75 || p.TempMean != 20.5 ||
		p.Setpoint != 21 || p.Mode != protocol.ModeHeat || p.HeatingS <= 0 || p.CoolingS != 0 {
		t.Fatalf("point %+v, want the two live samples: 20.25 and 20.75 °C, setpoint 21, heat mode, some heating", p)
	}
	if st := h.Stats(); st.Written != 2 || st.Dropped != 0 {
		t.Fatalf("stats %+v", st)
	}
}
