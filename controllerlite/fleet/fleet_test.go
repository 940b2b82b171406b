package fleet

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/thermofleet/thermo/controllerlite/store"
	"github.com/thermofleet/thermo/internal/testenv"
	"github.com/thermofleet/thermo/protocol"
)

var ctx = context.Background()

const (
	sp20heat = `{"setpoint_c":{"val":20,"w":[0,1]},"mode":{"val":"heat","w":[0,1]}}`
)

// TestEventsAndConflict: events are applied by the merge rules; in a
// concurrent conflict the device's value wins; a duplicate changes nothing.
func TestEventsAndConflict(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		r := e.start(t.TempDir())
		r.waitReady(t)
		d1 := e.device(t, "d1")

		d1.event(t, protocol.Clock{0, 1}, sp20heat)
		got := r.waitDevice(t, "d1", "first event", func(d Device) bool { return d.VC == protocol.Clock{1, 1} })
		if setpoint(got.Props) != 20 || mode(got.Props) != "heat" || got.Props[protocol.PropSetpoint].W != (protocol.Clock{0, 1}) {
			t.Fatalf("after the first event: %+v", got.Props)
		}

		// A remote write: written and sent at once, stamp = message clock.
		got, err := r.Set(ctx, "d1", map[string]any{"setpoint_c": 25.04})
		if err != nil {
			t.Fatal(err)
		}
		if got.VC != (protocol.Clock{2, 1}) || setpoint(got.Props) != 25 || got.Props[protocol.PropSetpoint].W != (protocol.Clock{2, 1}) || got.Pending {
			t.Fatalf("after Set: %+v", got)
		}
		cmd, _ := d1.waitCmd(t, "with the remote write", func(m protocol.Message, _ bool) bool { return m.VC == protocol.Clock{2, 1} })
		if setpoint(cmd.Props) != 25 || mode(cmd.Props) != "heat" || cmd.Props[protocol.PropMode].W != (protocol.Clock{0, 1}) {
			t.Fatalf("command: %+v", cmd)
		}

		// The device wrote the setpoint without having seen the command:
		// concurrent stamps [0,2] and [2,1], the device's value wins.
		d1.event(t, protocol.Clock{0, 2}, `{"setpoint_c":{"val":22,"w":[0,2]},"mode":{"val":"heat","w":[0,1]}}`)
		got = r.waitDevice(t, "d1", "the concurrent event", func(d Device) bool { return d.VC == protocol.Clock{3, 2} })
		if setpoint(got.Props) != 22 || got.Props[protocol.PropSetpoint].W != (protocol.Clock{0, 2}) || mode(got.Props) != "heat" {
			t.Fatalf("after the conflict: %+v", got.Props)
		}
		if !e.logs.contains("message applied", "conflicts=[setpoint_c]") {
			t.Error("the conflict was not logged")
		}

		// A stale (duplicate) event changes nothing.
		d1.event(t, protocol.Clock{0, 1}, `{"setpoint_c":{"val":30,"w":[0,1]}}`)
		d1.barrier(t, r)
		after, _ := r.Device("d1")
		if after.VC != got.VC || !reflect.DeepEqual(after.Props, got.Props) {
			t.Fatalf("a duplicate changed the state: %+v, was %+v", after, got)
		}
		if after.LastSeen == nil {
			t.Error("no last_seen after live messages")
		}
	})
}

// TestGreeting: a device's status "online", retained when the controller
// starts or live afterwards, gets a Command with the controller's clock
// and properties.
func TestGreeting(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		d1 := e.device(t, "d1")
		d1.status(t, true)
		d1.event(t, protocol.Clock{0, 1}, sp20heat)

		r := e.start(t.TempDir())
		r.waitReady(t)
		// Retained event [0,1] read: [1,1]; the greeting is a send: [2,1].
		cmd, _ := d1.waitCmd(t, "greeting at start", func(m protocol.Message, _ bool) bool { return m.VC == protocol.Clock{2, 1} })
		if setpoint(cmd.Props) != 20 || mode(cmd.Props) != "heat" {
			t.Fatalf("greeting: %+v", cmd)
		}
		if d, _ := r.Device("d1"); !d.Online {
			t.Error("d1 not online after its retained status")
		}

		// A device known only by its status gets a greeting with no props.
		d2 := e.device(t, "d2")
		d2.status(t, true)
		cmd, _ = d2.waitCmd(t, "live greeting", func(m protocol.Message, _ bool) bool { return m.VC == protocol.Clock{1, 0} })
		if len(cmd.Props) != 0 {
			t.Fatalf("greeting of an unknown device carries props: %+v", cmd.Props)
		}

		// Every status online is greeted, each a new send.
		d1.status(t, true)
		d1.waitCmd(t, "second greeting", func(m protocol.Message, _ bool) bool { return m.VC == protocol.Clock{3, 1} })

		d1.status(t, false)
		r.waitDevice(t, "d1", "offline", func(d Device) bool { return !d.Online })
	})
}

// TestSetWhileOffline: a write for an offline device is published retained
// at once, and the device gets it when it subscribes again.
func TestSetWhileOffline(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		r := e.start(t.TempDir())
		r.waitReady(t)
		d1 := e.device(t, "d1")
		d1.event(t, protocol.Clock{0, 1}, sp20heat)
		d1.status(t, true)
		d1.status(t, false)
		r.waitDevice(t, "d1", "offline", func(d Device) bool { return !d.Online && d.VC[1] == 1 })
		d1.c.Close()

		got, err := r.Set(ctx, "d1", map[string]any{"setpoint_c": 23, "mode": "cool"})
		if err != nil {
			t.Fatal(err)
		}
		if got.Pending {
			t.Fatalf("the command is pending with the broker up: %+v", got)
		}
		d1 = e.device(t, "d1")
		cmd, retained := d1.waitCmd(t, "with the offline write", func(m protocol.Message, _ bool) bool { return m.VC == got.VC })
		if !retained || setpoint(cmd.Props) != 23 || mode(cmd.Props) != "cool" || cmd.Props[protocol.PropMode].W != got.VC {
			t.Fatalf("command on reconnect: %+v retained=%v", cmd, retained)
		}
	})
}

// TestRebuildAfterWipe: a controller whose data directory is wiped rebuilds
// every device from the retained events and its own retained commands, and
// its next write dominates everything the devices have.
func TestRebuildAfterWipe(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		a := e.start(t.TempDir())
		a.waitReady(t)
		d1, d2 := e.device(t, "d1"), e.device(t, "d2")
		d1.event(t, protocol.Clock{0, 1}, sp20heat)
		d2.event(t, protocol.Clock{0, 3}, `{"mode":{"val":"cool","w":[0,3]},"setpoint_c":{"val":26,"w":[0,2]}}`)
		a.waitDevice(t, "d2", "event", func(d Device) bool { return d.VC[1] == 3 })
		a.waitDevice(t, "d1", "event", func(d Device) bool { return d.VC[1] == 1 })
		set, err := a.Set(ctx, "d1", map[string]any{"setpoint_c": 24})
		if err != nil {
			t.Fatal(err)
		}
		d1.waitCmd(t, "the write", func(m protocol.Message, _ bool) bool { return m.VC == set.VC })
		before := a.Devices()
		a.stop()

		b := e.start(t.TempDir()) // an empty data directory
		b.waitReady(t)
		after := b.Devices()
		if len(after) != len(before) {
			t.Fatalf("rebuilt %d devices, had %d: %+v", len(after), len(before), after)
		}
		for i := range before {
			if !reflect.DeepEqual(after[i].Props, before[i].Props) {
				t.Errorf("%s: rebuilt props %+v, had %+v", before[i].ID, after[i].Props, before[i].Props)
			}
			if o := after[i].VC.Compare(before[i].VC); o != protocol.Equal && o != protocol.After {
				// Only what went on the wire can come back, and
				// every send carries the clock: [3,1] was read
				// as [2,1] and ticked.
				t.Errorf("%s: rebuilt clock %v is behind %v", before[i].ID, after[i].VC, before[i].VC)
			}
		}
		// The next write is newer than anything d1 ever got.
		set2, err := b.Set(ctx, "d1", map[string]any{"setpoint_c": 26})
		if err != nil {
			t.Fatal(err)
		}
		cmd, _ := d1.waitCmd(t, "after the rebuild", func(m protocol.Message, _ bool) bool { return m.VC == set2.VC })
		if w := cmd.Props[protocol.PropSetpoint].W; w.Compare(set.VC) != protocol.After || setpoint(cmd.Props) != 26 {
			t.Fatalf("write after the rebuild: %+v, stamp not after %v", cmd.Props, set.VC)
		}
	})
}

// TestRejects: malformed, oversized and out-of-range messages are rejected
// with a logged reason and change nothing; a bad property is rejected
// alone and the rest of its message applies.
func TestRejects(t *testing.T) {
	forEachBroker(t, func(t *testing.T, e *env) {
		r := e.start(t.TempDir())
		r.waitReady(t)
		d1 := e.device(t, "d1")
		d1.event(t, protocol.Clock{0, 1}, sp20heat)
		d1.barrier(t, r)
		before, _ := r.Device("d1")
		rejected := r.Status().Rejected

		bad := []struct {
			kind    protocol.Kind
			payload string
			reason  string
		}{
			{protocol.KindEvent, `not json`, "not a JSON object"},
			{protocol.KindEvent, `{"v":1,"vc":[9,9],"props":{},"pad":"` + strings.Repeat("x", 5000) + `"}`, "over the 4096 byte limit"},
			{protocol.KindEvent, `{"v":2,"vc":[9,9],"props":{}}`, "v is 2"},
			{protocol.KindEvent, `{"vc":[9,9],"props":{}}`, "no v"},
			{protocol.KindEvent, `{"v":1,"props":{"mode":{"val":"off","w":[0,0]}}}`, "no vc"},
			{protocol.KindEvent, `{"v":1,"vc":[9.0,9],"props":{}}`, "not a non-negative integer"},
			{protocol.KindEvent, `{"v":1,"vc":[-1,9],"props":{}}`, "not a non-negative integer"},
			{protocol.KindEvent, `{"v":1,"vc":[9,9],"props":[]}`, "props is not an object"},
			{protocol.KindStatus, `{"v":1}`, "no online"},
			{protocol.KindTelemetry, `{"v":1,"ts":"2026-11-24T17:00:00Z","temp_c":500,"heat":true,"cool":false,"sensor_ok":true}`, "out of range"},
		}
		for _, b := range bad {
			d1.publish(t, b.kind, b.payload)
		}
		// A bad command reaches the fleet only from a controller (the
		// brokers drop a device's publish on cmd): handed over directly,
		// before the barrier.
		const badCmd = `{"v":1,"vc":"x"}`
		r.Receive(topic("d1", protocol.KindCmd), []byte(badCmd), false)
		d1.barrier(t, r)
		if got := r.Status().Rejected - rejected; got != uint64(len(bad)+1) {
			t.Fatalf("rejected %d, want %d", got, len(bad)+1)
		}
		if !e.logs.contains("message rejected", "topic="+topic("d1", protocol.KindCmd), "vc") {
			t.Error("no logged reason for the bad command")
		}
		for _, b := range bad {
			if !e.logs.contains("message rejected", "topic="+topic("d1", b.kind), b.reason) {
				t.Errorf("no logged reason %q for %s", b.reason, b.kind)
			}
		}
		after, _ := r.Device("d1")
		if after.VC != before.VC || !reflect.DeepEqual(after.Props, before.Props) || after.Online != before.Online {
			t.Fatalf("rejected messages changed the state: %+v, was %+v", after, before)
		}

		// Out-of-range setpoint: rejected alone; mode applies and the
		// clock merges.
		props := r.Status().PropsRejected
		d1.event(t, protocol.Clock{0, 2}, `{"setpoint_c":{"val":99,"w":[0,2]},"mode":{"val":"cool","w":[0,2]}}`)
		got := r.waitDevice(t, "d1", "partial event", func(d Device) bool { return d.VC == protocol.Clock{2, 2} })
		if setpoint(got.Props) != 20 || mode(got.Props) != "cool" {
			t.Fatalf("after a partly invalid event: %+v", got.Props)
		}
		if r.Status().PropsRejected != props+1 || !e.logs.contains("property rejected", "setpoint_c", "out of range") {
			t.Error("the bad property was not counted and logged")
		}
	})
}

// TestRejectTopics: messages on topics that name no device are rejected
// before anything is created.
func TestRejectTopics(t *testing.T) {
	log, logs := newLogger(t)
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := New(Options{Store: st, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); f.Run(rctx) }()
	defer func() { cancel(); <-done }()

	topics := []string{"thermo/Bad/event", "thermo/controller/event", "thermo/controller-b/event", "thermo/controller-b/status", "thermo/d1/other", "other/d1/event", "thermo/d1/x/event", "thermo/d1"}
	valid := `{"v":1,"vc":[0,1],"props":{}}`
	for _, tp := range topics {
		f.Receive(tp, []byte(valid), false)
	}
	testenv.WaitFor(t, "rejects", func() bool { return f.Status().Rejected == uint64(len(topics)) })
	if devs := f.Devices(); len(devs) != 0 {
		t.Fatalf("devices created by rejected messages: %+v", devs)
	}
	for _, tp := range []string{"thermo/controller/event", "thermo/controller-b/status"} {
		if !logs.contains("message rejected", "topic="+tp, "reserved") {
			t.Errorf("no reason logged for the controller's id in %s", tp)
		}
	}
	// Nor does an alert the broker raises about a controller's
	// certificate make it a device.
	f.RaiseAlert("controller-b", protocol.AlertTLSRefused, "test")
	f.RaiseAlert("d1", protocol.AlertTLSRefused, "test")
	testenv.WaitFor(t, "d1's alert", func() bool { _, ok := f.Device("d1"); return ok })
	if _, ok := f.Device("controller-b"); ok || !logs.contains("alert about a client that is no device", "client=controller-b") {
		t.Errorf("an alert about controller-b: device %v, logged %v", ok, logs.contains("alert about a client that is no device"))
	}
}

// TestSetErrors: invalid writes are refused with reasons before anything
// is stamped; a write before the fleet is ready fails cleanly at its
// deadline; an unknown device is reported.
func TestSetErrors(t *testing.T) {
	e := newEnv(t, "mosquitto", nil)
	e.m.Terminate() // the controller starts with its broker down
	r := e.start(t.TempDir())

	tests := []struct {
		name    string
		id      string
		changes map[string]any
		want    error
		reason  string
	}{
		{"unknown property", "d1", map[string]any{"fan": true}, ErrInvalid, `unknown property "fan"`},
		{"out of range", "d1", map[string]any{"setpoint_c": 35.1}, ErrInvalid, "out of range"},
		{"wrong type", "d1", map[string]any{"setpoint_c": "21"}, ErrInvalid, "must be a number"},
		{"bad mode", "d1", map[string]any{"mode": "hot"}, ErrInvalid, "is not one of"},
		{"null", "d1", map[string]any{"mode": nil}, ErrInvalid, "got null"},
		{"nothing", "d1", map[string]any{}, ErrInvalid, "no property"},
		{"bad id", "D1", map[string]any{"mode": "off"}, ErrUnknownDevice, "D1"},
		{"controller", "controller", map[string]any{"mode": "off"}, ErrUnknownDevice, "controller"},
		{"another controller", "controller-b", map[string]any{"mode": "off"}, ErrUnknownDevice, "controller-b"},
		{"not ready", "d1", map[string]any{"mode": "off"}, ErrNotReady, "retained"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
			defer cancel()
			_, err := r.Set(c, tc.id, tc.changes)
			if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Set: %v, want %v with %q", err, tc.want, tc.reason)
			}
		})
	}
	if r.IsReady() || len(r.Devices()) != 0 {
		t.Fatal("state changed with the broker down")
	}

	e.m.Start()
	r.waitReady(t)
	if _, err := r.Set(ctx, "d9", map[string]any{"mode": "off"}); !errors.Is(err, ErrUnknownDevice) {
		t.Fatalf("Set on an unknown device: %v", err)
	}
}

// TestOwedWhileLinkDown: a write made while the controller's link to an
// external broker is down is stored as owed, survives a controller
// restart, and goes out when the broker is back.
func TestOwedWhileLinkDown(t *testing.T) {
	e := newEnv(t, "mosquitto", &testenv.MosquittoOptions{Persistence: true})
	dir := t.TempDir()
	a := e.start(dir)
	a.waitReady(t)
	d1 := e.device(t, "d1")
	d1.event(t, protocol.Clock{0, 1}, sp20heat)
	a.waitDevice(t, "d1", "event", func(d Device) bool { return d.VC == protocol.Clock{1, 1} })
	d1.c.Close()

	e.m.Terminate()
	testenv.WaitFor(t, "link down", func() bool { return !a.Status().Connected })
	got, err := a.Set(ctx, "d1", map[string]any{"setpoint_c": 27})
	if err != nil {
		t.Fatal(err)
	}
	if !got.Pending || a.Status().Owed != 1 {
		t.Fatalf("not pending with the broker down: %+v, %+v", got, a.Status())
	}
	a.stop()

	// Restarted with the broker still down: the owed command is remembered.
	b := e.start(dir)
	if d, _ := b.Device("d1"); !d.Pending || setpoint(d.Props) != 27 {
		t.Fatalf("after restart: %+v", d)
	}
	e.m.Start()
	b.waitReady(t)
	sent := b.waitDevice(t, "d1", "owed command sent", func(d Device) bool { return !d.Pending })
	d1 = e.device(t, "d1")
	cmd, retained := d1.waitCmd(t, "owed", func(m protocol.Message, _ bool) bool { return setpoint(m.Props) == 27 })
	if !retained || cmd.Props[protocol.PropSetpoint].W != got.VC || cmd.VC.Compare(got.VC) != protocol.After || sent.VC != cmd.VC {
		t.Fatalf("owed command %+v (retained %v): want stamp %v and a later clock (device %+v)", cmd, retained, got.VC, sent)
	}
	if b.Status().Owed != 0 {
		t.Fatalf("still owed: %+v", b.Status())
	}
}

// TestStoreSurvivesReopen: everything the fleet shows comes back from its
// store after a restart, before any broker is attached.
func TestStoreSurvivesReopen(t *testing.T) {
	e := newEnv(t, "embedded", nil)
	dir := t.TempDir()
	a := e.start(dir)
	a.waitReady(t)
	d1 := e.device(t, "d1")
	d1.event(t, protocol.Clock{0, 1}, sp20heat)
	d1.status(t, true)
	if _, err := a.Set(ctx, "d1", map[string]any{"mode": "auto"}); err != nil {
		t.Fatal(err)
	}
	d1.barrier(t, a)
	before := a.Devices()
	a.stop()

	st, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	f, err := New(Options{Store: st, Logger: e.log})
	if err != nil {
		t.Fatal(err)
	}
	after := f.Devices()
	if !reflect.DeepEqual(after, before) {
		t.Fatalf("after reopen:\n got %+v\nwant %+v", after, before)
	}
	if len(after) != 1 || after[0].Telemetry == nil || after[0].LastSeen == nil || !after[0].Online || mode(after[0].Props) != "auto" {
		t.Fatalf("reopened device incomplete: %+v", after)
	}
}
